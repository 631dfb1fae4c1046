//! Label and field selectors, parsed and matched the way the API server does for pods.
//!
//! Label selectors: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, joined
//! by commas (all must hold). Field selectors: `f=v`, `f==v`, `f!=v` over the fields the
//! real server supports for pods (`metadata.name`, `metadata.namespace`, `spec.nodeName`,
//! `spec.restartPolicy`, `spec.schedulerName`, `spec.serviceAccountName`, `status.phase`,
//! `status.podIP`, `status.nominatedNodeName`); any other field is a 400, as on a real server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use super::status::Error;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelReq>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn bad(req: &str, why: &str) -> Error {
    Error::BadRequest(format!("unable to parse requirement: {why}: {req:?}"))
}

impl LabelSelector {
    /// Parses a `labelSelector` query parameter.
    ///
    /// # Errors
    /// [`Error::BadRequest`] naming the requirement that does not parse.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for raw in split_top_level(s) {
            let req = raw.trim();
            if req.is_empty() {
                return Err(bad(raw, "empty requirement"));
            }
            reqs.push(Self::parse_one(req)?);
        }
        Ok(Self(reqs))
    }

    fn parse_one(req: &str) -> Result<LabelReq, Error> {
        if let Some(key) = req.strip_prefix('!') {
            let key = key.trim();
            return if valid_key(key) {
                Ok(LabelReq::NotExists(key.to_owned()))
            } else {
                Err(bad(req, "invalid label key"))
            };
        }
        for (op, negate) in [("!=", true), ("==", false), ("=", false)] {
            if let Some((k, v)) = req.split_once(op) {
                let (k, v) = (k.trim(), v.trim());
                if !valid_key(k) {
                    return Err(bad(req, "invalid label key"));
                }
                if !valid_value(v) {
                    return Err(bad(req, "invalid label value"));
                }
                let vals = vec![v.to_owned()];
                return Ok(if negate {
                    LabelReq::NotIn(k.to_owned(), vals)
                } else {
                    LabelReq::In(k.to_owned(), vals)
                });
            }
        }
        let words: Vec<&str> = req.splitn(2, char::is_whitespace).collect();
        if let [key, rest] = words.as_slice() {
            let rest = rest.trim();
            let (negate, list) = if let Some(l) = rest.strip_prefix("notin") {
                (true, l)
            } else if let Some(l) = rest.strip_prefix("in") {
                (false, l)
            } else {
                return Err(bad(req, "unknown operator"));
            };
            let list = list.trim();
            let inner = list
                .strip_prefix('(')
                .and_then(|l| l.strip_suffix(')'))
                .ok_or_else(|| bad(req, "expected a parenthesised list"))?;
            if !valid_key(key) {
                return Err(bad(req, "invalid label key"));
            }
            let mut vals = Vec::new();
            for v in inner.split(',') {
                let v = v.trim();
                if v.is_empty() || !valid_value(v) {
                    return Err(bad(req, "invalid label value"));
                }
                vals.push(v.to_owned());
            }
            return Ok(if negate {
                LabelReq::NotIn((*key).to_owned(), vals)
            } else {
                LabelReq::In((*key).to_owned(), vals)
            });
        }
        if valid_key(req) {
            Ok(LabelReq::Exists(req.to_owned()))
        } else {
            Err(bad(req, "invalid label key"))
        }
    }

    /// Whether a set of labels satisfies every requirement.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.0.iter().all(|req| {
            let get = |k: &str| labels.and_then(|l| l.get(k));
            match req {
                LabelReq::Exists(k) => get(k).is_some(),
                LabelReq::NotExists(k) => get(k).is_none(),
                LabelReq::In(k, vals) => get(k).is_some_and(|v| vals.contains(v)),
                LabelReq::NotIn(k, vals) => get(k).is_none_or(|v| !vals.contains(v)),
            }
        })
    }
}

/// A pod field that field selectors may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
    NodeName,
    RestartPolicy,
    SchedulerName,
    ServiceAccountName,
    Phase,
    PodIp,
    NominatedNodeName,
}

impl Field {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "metadata.name" => Self::Name,
            "metadata.namespace" => Self::Namespace,
            "spec.nodeName" => Self::NodeName,
            "spec.restartPolicy" => Self::RestartPolicy,
            "spec.schedulerName" => Self::SchedulerName,
            "spec.serviceAccountName" => Self::ServiceAccountName,
            "status.phase" => Self::Phase,
            "status.podIP" => Self::PodIp,
            "status.nominatedNodeName" => Self::NominatedNodeName,
            _ => return None,
        })
    }

    /// The field's value; a missing field reads as the empty string, as on the real server.
    fn get(self, pod: &Pod) -> &str {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let v = match self {
            Self::Name => pod.metadata.name.as_deref(),
            Self::Namespace => pod.metadata.namespace.as_deref(),
            Self::NodeName => spec.and_then(|s| s.node_name.as_deref()),
            Self::RestartPolicy => spec.and_then(|s| s.restart_policy.as_deref()),
            Self::SchedulerName => spec.and_then(|s| s.scheduler_name.as_deref()),
            Self::ServiceAccountName => spec.and_then(|s| s.service_account_name.as_deref()),
            Self::Phase => status.and_then(|s| s.phase.as_deref()),
            Self::PodIp => status.and_then(|s| s.pod_ip.as_deref()),
            Self::NominatedNodeName => status.and_then(|s| s.nominated_node_name.as_deref()),
        };
        v.unwrap_or("")
    }
}

/// A parsed field selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(Field, bool, String)>);

impl FieldSelector {
    /// Parses a `fieldSelector` query parameter.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a malformed term or a field pods do not support.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(terms));
        }
        for raw in s.split(',') {
            let term = raw.trim();
            let (name, negate, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, false, v)
            } else {
                return Err(Error::BadRequest(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let field = Field::parse(name.trim()).ok_or_else(|| {
                Error::BadRequest(format!("field label not supported: {}", name.trim()))
            })?;
            terms.push((field, negate, value.trim().to_owned()));
        }
        Ok(Self(terms))
    }

    /// Whether a pod satisfies every term.
    pub fn matches(&self, pod: &Pod) -> bool {
        self.0
            .iter()
            .all(|(field, negate, value)| (field.get(pod) == value) != *negate)
    }
}

/// Both selectors of a list, watch or delete-collection request.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Selectors {
    /// Whether a pod matches both selectors.
    pub fn matches(&self, pod: &Pod) -> bool {
        self.labels.matches(pod.metadata.labels.as_ref()) && self.fields.matches(pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn label_selector_table() {
        let l = labels(&[("spark-role", "executor"), ("spark-exec-id", "7")]);
        let cases = [
            ("", true),
            ("spark-role=executor", true),
            ("spark-role==executor", true),
            ("spark-role!=executor", false),
            ("spark-role=driver", false),
            ("spark-role", true),
            ("!spark-role", false),
            ("!other", true),
            ("spark-exec-id in (1,7,9)", true),
            ("spark-exec-id in (1, 9)", false),
            ("spark-exec-id notin (1,9)", true),
            ("missing notin (1)", true),
            ("missing in (1)", false),
            ("spark-role=executor,spark-exec-id in (7)", true),
            ("spark-role=executor,spark-exec-id in (8)", false),
        ];
        for (sel, want) in cases {
            let parsed = LabelSelector::parse(sel).unwrap();
            assert_eq!(parsed.matches(Some(&l)), want, "{sel}");
        }
    }

    #[test]
    fn bad_label_selectors_are_400() {
        for sel in ["a=b,", "a in 1", "a in (x", "a ~ b", "a=b c", "x in ()"] {
            let err = LabelSelector::parse(sel).unwrap_err();
            assert_eq!(err.reason(), "BadRequest", "{sel}");
        }
    }

    #[test]
    fn field_selectors() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        let sel = FieldSelector::parse("metadata.name=p,status.phase!=Running").unwrap();
        assert!(sel.matches(&pod));
        let sel = FieldSelector::parse("status.phase=Pending").unwrap();
        assert!(!sel.matches(&pod));
        let err = FieldSelector::parse("spec.containers=x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "field label not supported: spec.containers"
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
