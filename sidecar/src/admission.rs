//! `AdmissionReview` v1 in, `AdmissionReview` out: the webhook's protocol, with no I/O.
//!
//! How bad input is answered (the API server's contract: a webhook answers HTTP 200 with an
//! `AdmissionReview` whose `response.uid` equals the request's):
//! - a body that is not an `admission.k8s.io/v1` `AdmissionReview` with a `request.uid` has no
//!   uid to answer, so it gets [`Error`], which the HTTP layer sends as **HTTP 400** with the
//!   message as plain text. The API server then counts a failed webhook call and applies the
//!   configuration's `failurePolicy` (`Ignore` in our manifests: the pod is admitted unchanged);
//! - a well-formed review whose object is not a pod we can read (another kind, an operation other
//!   than CREATE, an object that does not decode as a `Pod`) is **allowed unchanged**, with a
//!   warning in the response and in our log: this webhook only ever adds a sidecar, it never
//!   rejects a pod.
//!
//! So nothing that reaches [`review`] can make the webhook deny a pod or crash.

use base64::prelude::{BASE64_STANDARD, Engine as _};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::inject::{self, Config, Decision};

/// `apiVersion` of the only `AdmissionReview` version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// A body that cannot be answered with an `AdmissionReview` (sent as HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON, or not shaped like an `AdmissionReview`.
    #[error("body is not an AdmissionReview: {0}")]
    Malformed(#[source] serde_json::Error),
    /// Another `apiVersion`/`kind` (v1beta1 is not served: list only v1 in admissionReviewVersions).
    #[error(
        "expected apiVersion {API_VERSION} kind AdmissionReview, got apiVersion {api_version:?} kind {kind:?}"
    )]
    WrongType {
        /// The `apiVersion` received.
        api_version: String,
        /// The `kind` received.
        kind: String,
    },
    /// No `request`, or a request without `uid`.
    #[error("AdmissionReview has no request with a uid")]
    NoRequest,
    /// The response could not be serialized (never expected).
    #[error("cannot serialize the response: {0}")]
    Serialize(#[source] serde_json::Error),
}

impl Error {
    /// Short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::WrongType { .. } => "wrong_type",
            Self::NoRequest => "no_request",
            Self::Serialize(_) => "serialize",
        }
    }
}

/// What happened to one pod, for the log line and metrics of the HTTP layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Decided by [`inject::mutate`].
    Decided(Decision),
    /// Admitted unchanged: not a pod CREATE we can read; the reason is also a response warning.
    NotAPod(String),
}

/// An answer to one review.
#[derive(Debug)]
pub struct Reviewed {
    /// The `AdmissionReview` to send back (HTTP 200, `application/json`).
    pub body: Vec<u8>,
    /// `namespace/name` of the pod (name may be empty when only `generateName` is set).
    pub pod: String,
    /// What was decided.
    pub verdict: Verdict,
}

/// Answers one `AdmissionReview` body.
///
/// # Errors
/// [`Error`] when the body cannot be answered with a review (see the module docs).
pub fn review(body: &[u8], config: &Config) -> Result<Reviewed, Error> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(Error::Malformed)?;
    if review.types.api_version != API_VERSION || review.types.kind != "AdmissionReview" {
        return Err(Error::WrongType {
            api_version: review.types.api_version,
            kind: review.types.kind,
        });
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| Error::NoRequest)?;
    if request.uid.is_empty() {
        return Err(Error::NoRequest);
    }
    let pod_key = format!(
        "{}/{}",
        request.namespace.as_deref().unwrap_or(""),
        request.name
    );
    let response = AdmissionResponse::from(&request);

    let (response, verdict) = match pod_of(&request) {
        Err(reason) => {
            let mut response = response;
            response.warnings = Some(vec![format!(
                "kshuffle sidecar webhook: {reason}; admitted unchanged"
            )]);
            (response, Verdict::NotAPod(reason))
        }
        Ok(pod) => {
            let decision = inject::mutate(&pod, config);
            let response = match &decision {
                Decision::Inject(patch) => response.with_patch(patch.clone()).map_err(|e| {
                    // SerializePatchError wraps a serde_json::Error; keep the message.
                    Error::Serialize(serde_json::Error::io(std::io::Error::other(e.to_string())))
                })?,
                Decision::Skip(_) => response,
                Decision::Unsafe(reason) => {
                    let mut response = response;
                    response.warnings =
                        Some(vec![format!("kshuffle sidecar not injected: {reason}")]);
                    response
                }
            };
            (response, Verdict::Decided(decision))
        }
    };
    let mut answer = serde_json::to_value(response.into_review()).map_err(Error::Serialize)?;
    patch_as_base64(&mut answer);
    let body = serde_json::to_vec(&answer).map_err(Error::Serialize)?;
    Ok(Reviewed {
        body,
        pod: pod_key,
        verdict,
    })
}

/// The pod of a CREATE, or why there is none.
fn pod_of(request: &AdmissionRequest<DynamicObject>) -> Result<Pod, String> {
    if !request.kind.group.is_empty() || request.kind.kind != "Pod" {
        return Err(format!(
            "not a core/v1 Pod but {}/{}",
            request.kind.group, request.kind.kind
        ));
    }
    if request.operation != Operation::Create {
        return Err(format!("operation {:?} is not CREATE", request.operation));
    }
    let object = request
        .object
        .as_ref()
        .ok_or_else(|| "request has no object".to_owned())?;
    let value = serde_json::to_value(object).map_err(|e| format!("object unreadable: {e}"))?;
    serde_json::from_value(value).map_err(|e| format!("object is not a valid Pod: {e}"))
}

/// `response.patch` is a Go `[]byte`: kube-core serializes it as an array of numbers, which Go's
/// decoder accepts, but the documented wire form (and what every other webhook sends) is a
/// base64 string. Send that.
fn patch_as_base64(answer: &mut serde_json::Value) {
    let Some(patch) = answer.pointer_mut("/response/patch") else {
        return;
    };
    let Some(items) = patch.as_array() else {
        return;
    };
    let bytes: Vec<u8> = items
        .iter()
        .filter_map(|b| b.as_u64())
        .filter_map(|b| u8::try_from(b).ok())
        .collect();
    if bytes.len() == items.len() {
        *patch = serde_json::Value::String(BASE64_STANDARD.encode(bytes));
    }
}
