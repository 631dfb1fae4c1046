//! API errors as the Kubernetes API server shapes them: a `Status` object (`kind: Status`,
//! `status: Failure`, `reason`, `code`, `details`) with the matching HTTP status code.
//!
//! Invariant: every error the fake server answers goes through [`Error`], so each carries
//! the reason string and code of the real server (`k8s.io/apimachinery/pkg/api/errors`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 404 `NotFound`: the named pod does not exist.
    #[error("pods \"{name}\" not found")]
    NotFound {
        /// The pod's name.
        name: String,
    },
    /// 409 `AlreadyExists`: a pod of that name exists in the namespace.
    #[error("pods \"{name}\" already exists")]
    AlreadyExists {
        /// The pod's name.
        name: String,
    },
    /// 409 `Conflict`: an update named a `resourceVersion` that is no longer current.
    #[error(
        "Operation cannot be fulfilled on pods \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict {
        /// The pod's name.
        name: String,
    },
    /// 410 `Expired` (or `Gone`, see [`crate::ExpiredReason`]): a `resourceVersion` or
    /// `continue` token older than the kept event history.
    #[error("{message}")]
    Expired {
        /// The human-readable message, as the real server words it.
        message: String,
        /// `Expired` or `Gone`.
        reason: &'static str,
    },
    /// 400 `BadRequest`: a malformed body, selector or parameter.
    #[error("{0}")]
    BadRequest(String),
    /// 422 `Invalid`: a well-formed pod that fails validation.
    #[error("Pod \"{name}\" is invalid: {reason}")]
    Invalid {
        /// The pod's name (may be empty).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// 415 `UnsupportedMediaType`: a patch type the fake does not implement.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(&'static str),
    /// 405 `MethodNotAllowed`.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 500 `InternalError`: injected by a fault.
    #[error("Internal error occurred: injected fault")]
    Internal,
    /// 503 `ServiceUnavailable`: injected by a fault.
    #[error("the server is currently unable to handle the request")]
    Unavailable,
    /// 500 `InternalError`: a mutating webhook could not be called under `failurePolicy:
    /// Fail`, or its patch did not apply (see `admission/`).
    #[error("Internal error occurred: {message}")]
    WebhookFailed {
        /// `failed calling webhook "<name>": …`, as the real server words it.
        message: String,
    },
    /// A mutating webhook answered `allowed: false`: its code (400 when it gave none) and
    /// reason, and `admission webhook "<name>" denied the request: …`.
    #[error("{message}")]
    WebhookDenied {
        /// The HTTP code (400 to 599).
        code: u16,
        /// The webhook's `reason` (may be empty).
        reason: String,
        /// The whole message.
        message: String,
    },
}

impl Error {
    /// The HTTP status code the real server uses for this error.
    pub fn code(&self) -> StatusCode {
        match self {
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Expired { .. } => StatusCode::GONE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::WebhookFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::WebhookDenied { code, .. } => {
                StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// The `reason` field of the `Status` (`metav1.StatusReason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::Expired { reason, .. } => reason,
            Self::BadRequest(_) => "BadRequest",
            Self::Invalid { .. } => "Invalid",
            Self::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::Internal => "InternalError",
            Self::Unavailable => "ServiceUnavailable",
            Self::WebhookFailed { .. } => "InternalError",
            // The webhook's own reason is put in the `Status` by `to_status`.
            Self::WebhookDenied { .. } => "WebhookDenied",
        }
    }

    /// A label for counters and logs.
    pub fn kind(&self) -> &'static str {
        self.reason()
    }

    /// The `Status` object, as JSON.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let details = match self {
            Self::NotFound { name }
            | Self::AlreadyExists { name }
            | Self::Conflict { name }
            | Self::Invalid { name, .. } => Some(json!({ "name": name, "kind": "pods" })),
            Self::WebhookFailed { message } => Some(json!({ "causes": [{ "message": message }] })),
            _ => None,
        };
        if let (Self::WebhookDenied { reason, .. }, Some(obj)) = (self, status.as_object_mut()) {
            obj.insert("reason".into(), Value::String(reason.clone()));
        }
        if let (Some(details), Some(obj)) = (details, status.as_object_mut()) {
            obj.insert("details".into(), details);
        }
        status
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.code(), axum::Json(self.to_status())).into_response()
    }
}
