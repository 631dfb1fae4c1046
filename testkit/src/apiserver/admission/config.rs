//! Validation and defaulting of a `MutatingWebhookConfiguration` on create: the part of the
//! real server's checks that a hand-written manifest is likely to trip over, with its
//! defaults (`failurePolicy: Fail`, `matchPolicy: Equivalent`, `timeoutSeconds: 10`,
//! `reinvocationPolicy: Never`, empty selectors, rule `scope: *`).

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::super::typed::{KindError, check_selector};

/// Whether `s` is a lowercase RFC 1123 label.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks `obj` and fills in the server's defaults.
///
/// # Errors
/// 422 Invalid listing every cause.
pub fn validate_and_default(obj: &mut MutatingWebhookConfiguration) -> Result<(), KindError> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let mut causes: Vec<(String, String)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, hook) in obj.webhooks.iter_mut().flatten().enumerate() {
        let f = format!("webhooks[{i}]");
        if hook.name.split('.').filter(|p| !p.is_empty()).count() < 3 {
            causes.push((
                format!("{f}.name"),
                format!("Invalid value: {:?}: should be a domain with at least three segments separated by dots", hook.name),
            ));
        }
        if !seen.insert(hook.name.clone()) {
            causes.push((
                format!("{f}.name"),
                format!("Duplicate value: {:?}", hook.name),
            ));
        }
        match hook.side_effects.as_str() {
            "None" | "NoneOnDryRun" => {}
            "" => causes.push((format!("{f}.sideEffects"), "Required value".into())),
            other => causes.push((
                format!("{f}.sideEffects"),
                format!(
                    "Unsupported value: {other:?}: supported values: \"None\", \"NoneOnDryRun\""
                ),
            )),
        }
        if !hook.admission_review_versions.iter().any(|v| v == "v1") {
            causes.push((
                format!("{f}.admissionReviewVersions"),
                "Invalid value: the fake API server sends only admission.k8s.io/v1 AdmissionReviews, so \"v1\" must be listed".into(),
            ));
        }
        let cc = &hook.client_config;
        match (&cc.url, &cc.service) {
            (Some(_), Some(_)) => causes.push((
                format!("{f}.clientConfig"),
                "Required value: exactly one of url or service is required".into(),
            )),
            (None, None) => causes.push((
                format!("{f}.clientConfig"),
                "Required value: exactly one of url or service is required".into(),
            )),
            (Some(url), None) => {
                if !url.starts_with("https://") {
                    causes.push((
                        format!("{f}.clientConfig.url"),
                        "Unsupported value: 'https' is the only allowed URL scheme".into(),
                    ));
                }
                if url.contains('?') || url.contains('#') {
                    causes.push((
                        format!("{f}.clientConfig.url"),
                        "Invalid value: query parameters and fragments are not allowed".into(),
                    ));
                }
            }
            (None, Some(svc)) => {
                if svc.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
                    causes.push((
                        format!("{f}.clientConfig.service.path"),
                        "Invalid value: must start with a '/'".into(),
                    ));
                }
                if svc.port.is_some_and(|p| !(1..=65535).contains(&p)) {
                    causes.push((
                        format!("{f}.clientConfig.service.port"),
                        "Invalid value: port is not valid: must be between 1 and 65535, inclusive"
                            .into(),
                    ));
                }
            }
        }
        match hook
            .failure_policy
            .get_or_insert_with(|| "Fail".into())
            .as_str()
        {
            "Fail" | "Ignore" => {}
            other => causes.push((
                format!("{f}.failurePolicy"),
                format!("Unsupported value: {other:?}: supported values: \"Fail\", \"Ignore\""),
            )),
        }
        match hook
            .reinvocation_policy
            .get_or_insert_with(|| "Never".into())
            .as_str()
        {
            "Never" | "IfNeeded" => {}
            other => causes.push((
                format!("{f}.reinvocationPolicy"),
                format!("Unsupported value: {other:?}: supported values: \"Never\", \"IfNeeded\""),
            )),
        }
        hook.match_policy.get_or_insert_with(|| "Equivalent".into());
        let timeout = *hook.timeout_seconds.get_or_insert(10);
        if !(1..=30).contains(&timeout) {
            causes.push((
                format!("{f}.timeoutSeconds"),
                format!(
                    "Invalid value: {timeout}: the timeout value must be between 1 and 30 seconds"
                ),
            ));
        }
        if hook
            .match_conditions
            .as_ref()
            .is_some_and(|m| !m.is_empty())
        {
            causes.push((
                format!("{f}.matchConditions"),
                "Forbidden: matchConditions (CEL) are not supported by the fake API server".into(),
            ));
        }
        check_selector(
            hook.namespace_selector.as_ref(),
            &format!("{f}.namespaceSelector"),
            &mut causes,
        );
        check_selector(
            hook.object_selector.as_ref(),
            &format!("{f}.objectSelector"),
            &mut causes,
        );
        hook.namespace_selector
            .get_or_insert_with(LabelSelector::default);
        hook.object_selector
            .get_or_insert_with(LabelSelector::default);
        for (j, rule) in hook.rules.iter_mut().flatten().enumerate() {
            for op in rule.operations.iter().flatten() {
                if !matches!(
                    op.as_str(),
                    "*" | "CREATE" | "UPDATE" | "DELETE" | "CONNECT"
                ) {
                    causes.push((
                        format!("{f}.rules[{j}].operations"),
                        format!("Unsupported value: {op:?}: supported values: \"*\", \"CONNECT\", \"CREATE\", \"DELETE\", \"UPDATE\""),
                    ));
                }
            }
            rule.scope.get_or_insert_with(|| "*".into());
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(KindError::Invalid(
            "MutatingWebhookConfiguration",
            name,
            causes,
        ))
    }
}
