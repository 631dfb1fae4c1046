//! The pod store: objects by namespace and name, a global `resourceVersion` counter, a bounded
//! history of watch events and a broadcast of new ones.
//!
//! Invariants: every change bumps the `resourceVersion` by one and appends exactly one event
//! (ADDED, MODIFIED or DELETED) to the history and the broadcast, under the same lock, so a
//! watcher that subscribes under that lock sees every event after its starting version, once.
//! The history keeps the last `history_limit` events; a `resourceVersion` older than that is
//! answered with 410, as the real server does after compaction.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use super::ExpiredReason;
use super::selector::Selectors;
use super::status::Error;

/// (namespace, name).
pub type Key = (String, String);

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change to one pod.
#[derive(Debug)]
pub struct Event {
    /// The `resourceVersion` this change created.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// The pod after the change (for DELETED, its last state).
    pub object: Pod,
    /// The pod before a MODIFIED change, so selector watches can turn it into ADDED/DELETED.
    pub previous: Option<Pod>,
}

/// A stored pod plus what the simulated control plane tracks about it.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// The object as the API serves it.
    pub pod: Pod,
    /// When it was created (monotonic, for simulated latencies).
    pub created: Instant,
    /// When it was bound to a node.
    pub bound_at: Option<Instant>,
    /// A graceful deletion: when it was asked for, and when its grace period ends.
    pub delete_at: Option<(Instant, Instant)>,
    /// Whether the scheduler already reported it unschedulable.
    pub unschedulable_noted: bool,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// The matching pods of this page.
    pub items: Vec<Pod>,
    /// The list's `resourceVersion`.
    pub rv: u64,
    /// The `continue` token for the next page, if any.
    pub continue_token: Option<String>,
}

/// Where a watch starts.
#[derive(Debug)]
pub struct WatchStart {
    /// Events to send before the live ones.
    pub initial: Vec<Arc<Event>>,
    /// Live events after `rv`.
    pub rx: broadcast::Receiver<Arc<Event>>,
    /// The `resourceVersion` the live events follow.
    pub rv: u64,
}

/// The mutable state behind the lock.
#[derive(Debug)]
pub struct State {
    /// Pods by (namespace, name).
    pub pods: BTreeMap<Key, Tracked>,
    /// Objects of the other resources (see `objects.rs`).
    pub objects: super::objects::Objects,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    tx: broadcast::Sender<Arc<Event>>,
    seq: u64,
    pending: u64,
    max_pending: u64,
}

/// Whether a pod counts as pending: phase Pending and not being deleted.
fn is_pending(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
}

/// The store, shared by the HTTP handlers, the simulated control plane and the test handle.
#[derive(Debug)]
pub struct Store {
    state: Mutex<State>,
    /// Woken on every change, so the simulation reacts without polling.
    pub changed: Notify,
    expired_reason: ExpiredReason,
}

/// Now, as a Kubernetes timestamp.
pub fn now_time() -> Time {
    Time(Timestamp::now())
}

/// The 5 characters the real server appends to a `generateName` (`utilrand.String(5)`: its
/// alphabet has no vowels and no look-alike digits), derived from `seed` by a bit mixer, so
/// distinct seeds give different-looking names (`spark-exec-` + `x7b2q`).
pub fn random_suffix(seed: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    // splitmix64
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let n = ALPHABET.len() as u64;
    (0..5)
        .map(|_| {
            let c = ALPHABET
                .get(usize::try_from(z % n).unwrap_or(0))
                .copied()
                .unwrap_or(b'b');
            z /= n;
            char::from(c)
        })
        .collect()
}

fn key_of(ns: &str, name: &str) -> Key {
    (ns.to_owned(), name.to_owned())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks what the real server requires of a new pod (a subset of its validation).
fn validate(pod: &Pod, name: &str) -> Result<(), Error> {
    let invalid = |reason: String| Error::Invalid {
        name: name.to_owned(),
        reason,
    };
    if !valid_name(name) {
        return Err(invalid(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
        )));
    }
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| invalid("spec.containers: Required value".into()))?;
    if spec.containers.is_empty() {
        return Err(invalid("spec.containers: Required value".into()));
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if c.name.is_empty() {
            return Err(invalid(format!(
                "spec.containers[{i}].name: Required value"
            )));
        }
        if c.image.as_deref().unwrap_or("").is_empty() {
            return Err(invalid(format!(
                "spec.containers[{i}].image: Required value"
            )));
        }
        let res = c.resources.as_ref();
        for (what, map) in [
            ("requests", res.and_then(|r| r.requests.as_ref())),
            ("limits", res.and_then(|r| r.limits.as_ref())),
        ] {
            for (rname, q) in map.into_iter().flatten() {
                if super::quantity::parse_scaled(&q.0, 1000).is_none() {
                    return Err(Error::BadRequest(format!(
                        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': spec.containers[{i}].resources.{what}.{rname}: {:?}",
                        q.0
                    )));
                }
            }
        }
    }
    Ok(())
}

// === impl State ===

impl State {
    /// The current `resourceVersion`.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Takes the next `resourceVersion` for a change that is not to a pod (one counter for
    /// every kind, as etcd's revision is); no pod watch event is emitted.
    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// The most pods that were pending at once.
    pub fn max_pending(&self) -> u64 {
        self.max_pending
    }

    /// Records a change: bumps the version, stamps it on the object, appends and broadcasts.
    pub fn emit(&mut self, kind: EventType, mut object: Pod, previous: Option<Pod>) -> Pod {
        let was = previous.as_ref().is_some_and(is_pending);
        let (before, after) = match kind {
            EventType::Added => (false, is_pending(&object)),
            EventType::Modified => (was, is_pending(&object)),
            EventType::Deleted => (is_pending(&object), false),
        };
        match (before, after) {
            (false, true) => self.pending += 1,
            (true, false) => self.pending = self.pending.saturating_sub(1),
            _ => {}
        }
        self.max_pending = self.max_pending.max(self.pending);
        self.rv += 1;
        object.metadata.resource_version = Some(self.rv.to_string());
        let event = Arc::new(Event {
            rv: self.rv,
            kind,
            object: object.clone(),
            previous,
        });
        if self.history.len() >= self.history_limit {
            self.history.pop_front();
        }
        self.history.push_back(Arc::clone(&event));
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(event);
        object
    }

    /// Replaces a stored pod through `f`, emitting MODIFIED if anything changed.
    pub fn modify(
        &mut self,
        key: &Key,
        f: impl FnOnce(&mut Tracked) -> Result<(), Error>,
    ) -> Result<Pod, Error> {
        let Some(tracked) = self.pods.get_mut(key) else {
            return Err(Error::NotFound {
                name: key.1.clone(),
            });
        };
        let before = tracked.pod.clone();
        f(tracked)?;
        // Identity and bookkeeping fields are the server's, whatever the caller sent.
        tracked.pod.metadata.name = before.metadata.name.clone();
        tracked.pod.metadata.namespace = before.metadata.namespace.clone();
        tracked.pod.metadata.uid = before.metadata.uid.clone();
        tracked.pod.metadata.creation_timestamp = before.metadata.creation_timestamp.clone();
        tracked.pod.metadata.deletion_timestamp = before.metadata.deletion_timestamp.clone();
        tracked.pod.metadata.resource_version = before.metadata.resource_version.clone();
        if tracked.pod == before {
            return Ok(before);
        }
        let after = tracked.pod.clone();
        let stamped = self.emit(EventType::Modified, after, Some(before));
        if let Some(t) = self.pods.get_mut(key) {
            t.pod.metadata.resource_version = stamped.metadata.resource_version.clone();
        }
        Ok(stamped)
    }

    /// Sets server-owned fields that `modify` protects (deletion timestamp) and emits.
    pub fn modify_meta(&mut self, key: &Key, f: impl FnOnce(&mut Tracked)) -> Option<Pod> {
        let tracked = self.pods.get_mut(key)?;
        let before = tracked.pod.clone();
        f(tracked);
        let after = tracked.pod.clone();
        let stamped = self.emit(EventType::Modified, after, Some(before));
        if let Some(t) = self.pods.get_mut(key) {
            t.pod.metadata.resource_version = stamped.metadata.resource_version.clone();
        }
        Some(stamped)
    }

    /// Removes a pod for good, emitting DELETED.
    pub fn remove(&mut self, key: &Key) -> Option<Pod> {
        let tracked = self.pods.remove(key)?;
        Some(self.emit(EventType::Deleted, tracked.pod, None))
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The oldest `resourceVersion` a watch or continue token may start from.
    fn oldest_start(&self) -> u64 {
        match self.history.front() {
            Some(first) if self.history.len() >= self.history_limit => first.rv - 1,
            _ => 0,
        }
    }
}

// === impl Store ===

impl Store {
    /// A store keeping `history_limit` events.
    pub fn new(history_limit: usize, expired_reason: ExpiredReason) -> Self {
        // The broadcast buffer bounds how far a slow watcher may lag before it is cut off;
        // the real server likewise closes watches that cannot keep up.
        let (tx, _) = broadcast::channel(history_limit.max(16));
        Self {
            state: Mutex::new(State {
                pods: BTreeMap::new(),
                objects: BTreeMap::new(),
                rv: 0,
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                tx,
                seq: 0,
                pending: 0,
                max_pending: 0,
            }),
            changed: Notify::new(),
            expired_reason,
        }
    }

    /// Locks the state. The lock is never held across an await.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic in a test helper already failed the test; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expired(&self, message: String) -> Error {
        Error::Expired {
            message,
            reason: self.expired_reason.as_str(),
        }
    }

    /// Creates a pod, as `POST .../namespaces/{ns}/pods`.
    ///
    /// # Errors
    /// 409 AlreadyExists, 422 Invalid, 400 BadRequest (namespace mismatch, bad quantity).
    pub fn create(&self, ns: &str, mut pod: Pod) -> Result<Pod, Error> {
        if let Some(body_ns) = pod.metadata.namespace.as_deref()
            && body_ns != ns
        {
            return Err(Error::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        let mut state = self.lock();
        let name = match (
            pod.metadata.name.clone(),
            pod.metadata.generate_name.clone(),
        ) {
            (Some(n), _) if !n.is_empty() => n,
            (_, Some(prefix)) if !prefix.is_empty() => {
                let seq = state.next_seq();
                format!("{prefix}{}", random_suffix(seq))
            }
            _ => {
                return Err(Error::Invalid {
                    name: String::new(),
                    reason: "metadata.name: Required value: name or generateName is required"
                        .into(),
                });
            }
        };
        validate(&pod, &name)?;
        let key = key_of(ns, &name);
        if state.pods.contains_key(&key) {
            return Err(Error::AlreadyExists { name });
        }
        let seq = state.next_seq();
        pod.metadata.name = Some(name);
        pod.metadata.namespace = Some(ns.to_owned());
        pod.metadata.uid = Some(format!("00000000-0000-4000-8000-{seq:012x}"));
        pod.metadata.creation_timestamp = Some(now_time());
        pod.metadata.deletion_timestamp = None;
        pod.metadata.deletion_grace_period_seconds = None;
        pod.metadata.generation = Some(1);
        pod.status = Some(PodStatus {
            phase: Some("Pending".into()),
            ..PodStatus::default()
        });
        let stamped = state.emit(EventType::Added, pod, None);
        state.pods.insert(
            key,
            Tracked {
                pod: stamped.clone(),
                created: Instant::now(),
                bound_at: None,
                delete_at: None,
                unschedulable_noted: false,
            },
        );
        drop(state);
        self.changed.notify_one();
        Ok(stamped)
    }

    /// Reads one pod.
    ///
    /// # Errors
    /// 404 NotFound.
    pub fn get(&self, ns: &str, name: &str) -> Result<Pod, Error> {
        self.lock()
            .pods
            .get(&key_of(ns, name))
            .map(|t| t.pod.clone())
            .ok_or_else(|| Error::NotFound {
                name: name.to_owned(),
            })
    }

    /// Lists pods, optionally one page at a time.
    ///
    /// The continue token carries the list's version and the last key. Later pages are read
    /// from the current state after that key (the real server reads a consistent snapshot;
    /// a client that watches from the list's version catches up on the difference either way).
    ///
    /// # Errors
    /// 400 for a malformed token, 410 for a token older than the history.
    pub fn list(
        &self,
        ns: Option<&str>,
        selectors: &Selectors,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, Error> {
        let state = self.lock();
        let (list_rv, after): (u64, Option<Key>) = match continue_token {
            None | Some("") => (state.rv, None),
            Some(token) => {
                let bad = || Error::BadRequest("continue key is not valid".into());
                let mut parts = token.splitn(3, '|');
                let rv: u64 = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
                let kns = parts.next().ok_or_else(bad)?;
                let kname = parts.next().ok_or_else(bad)?;
                if rv < state.oldest_start() {
                    return Err(self.expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                    ));
                }
                (rv, Some(key_of(kns, kname)))
            }
        };
        let limit = limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        let range = match &after {
            Some(k) => state
                .pods
                .range::<Key, _>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
            None => state.pods.range::<Key, _>(..),
        };
        for (key, tracked) in range {
            if ns.is_some_and(|n| n != key.0) || !selectors.matches(&tracked.pod) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                break;
            }
            items.push(tracked.pod.clone());
            last_key = Some(key.clone());
        }
        let continue_token = match (more, last_key) {
            (true, Some((kns, kname))) => Some(format!("{list_rv}|{kns}|{kname}")),
            _ => None,
        };
        Ok(ListPage {
            items,
            rv: list_rv,
            continue_token,
        })
    }

    /// Starts a watch. `from` of `None` (or 0) starts with synthetic ADDED events for every
    /// existing pod, as the real server does; `Some(rv)` replays the history after `rv`.
    ///
    /// # Errors
    /// 410 Expired (or Gone) when `rv` is older than the history; the HTTP layer sends it as
    /// an ERROR watch event, as the real server does.
    pub fn watch(&self, ns: Option<&str>, from: Option<u64>) -> Result<WatchStart, Error> {
        let state = self.lock();
        let rx = state.tx.subscribe();
        let initial = match from {
            None | Some(0) => state
                .pods
                .iter()
                .filter(|(k, _)| ns.is_none_or(|n| n == k.0))
                .map(|(_, t)| {
                    let rv = t
                        .pod
                        .metadata
                        .resource_version
                        .as_deref()
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0);
                    Arc::new(Event {
                        rv,
                        kind: EventType::Added,
                        object: t.pod.clone(),
                        previous: None,
                    })
                })
                .collect(),
            Some(rv) => {
                let oldest = state.oldest_start();
                if rv < oldest {
                    return Err(self.expired(format!("too old resource version: {rv} ({oldest})")));
                }
                state
                    .history
                    .iter()
                    .filter(|e| e.rv > rv)
                    .cloned()
                    .collect()
            }
        };
        Ok(WatchStart {
            initial,
            rx,
            rv: state.rv,
        })
    }

    /// Updates a pod through `f`, checking `expected_rv` if given (PUT semantics).
    ///
    /// # Errors
    /// 404, 409 Conflict on a stale version, or whatever `f` returns.
    pub fn update(
        &self,
        ns: &str,
        name: &str,
        expected_rv: Option<&str>,
        f: impl FnOnce(&mut Pod) -> Result<(), Error>,
    ) -> Result<Pod, Error> {
        let key = key_of(ns, name);
        let mut state = self.lock();
        let out = state.modify(&key, |t| {
            if let Some(rv) = expected_rv.filter(|r| !r.is_empty())
                && t.pod.metadata.resource_version.as_deref() != Some(rv)
            {
                return Err(Error::Conflict {
                    name: name.to_owned(),
                });
            }
            f(&mut t.pod)
        });
        drop(state);
        self.changed.notify_one();
        out
    }

    /// Deletes a pod the way the pod strategy does: immediately when it is not bound to a
    /// node, already terminal, or `grace` is 0; otherwise gracefully (deletionTimestamp set,
    /// removal by the simulated kubelet later).
    ///
    /// # Errors
    /// 404 NotFound, 409 Conflict on a failed precondition.
    pub fn delete(
        &self,
        ns: &str,
        name: &str,
        grace: Option<i64>,
        precondition: Option<(Option<String>, Option<String>)>,
    ) -> Result<Pod, Error> {
        let key = key_of(ns, name);
        let mut state = self.lock();
        let Some(tracked) = state.pods.get(&key) else {
            return Err(Error::NotFound {
                name: name.to_owned(),
            });
        };
        if let Some((uid, rv)) = precondition {
            let meta = &tracked.pod.metadata;
            if uid.is_some_and(|u| meta.uid.as_deref() != Some(u.as_str()))
                || rv.is_some_and(|r| meta.resource_version.as_deref() != Some(r.as_str()))
            {
                return Err(Error::Conflict {
                    name: name.to_owned(),
                });
            }
        }
        let out = Self::delete_locked(&mut state, &key, grace);
        drop(state);
        self.changed.notify_one();
        out.ok_or_else(|| Error::NotFound {
            name: name.to_owned(),
        })
    }

    fn delete_locked(state: &mut State, key: &Key, grace: Option<i64>) -> Option<Pod> {
        let tracked = state.pods.get(key)?;
        let pod = &tracked.pod;
        let spec = pod.spec.as_ref();
        let bound = spec
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let terminal = matches!(phase, Some("Succeeded" | "Failed"));
        let default_grace = spec
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let grace = grace.unwrap_or(default_grace).max(0);
        if grace == 0 || !bound || terminal {
            let mut stamped = state.remove(key)?;
            stamped.metadata.deletion_timestamp = Some(now_time());
            stamped.metadata.deletion_grace_period_seconds = Some(0);
            return Some(stamped);
        }
        let now = Instant::now();
        let deadline = now + std::time::Duration::from_secs(grace.unsigned_abs());
        if let Some((_, existing)) = tracked.delete_at
            && existing <= deadline
        {
            // Already terminating at least as fast: the real server returns the object as is.
            return Some(tracked.pod.clone());
        }
        let wall = Timestamp::now()
            .checked_add(jiff_span_secs(grace))
            .unwrap_or_else(|_| Timestamp::now());
        state.modify_meta(key, |t| {
            let requested = t.delete_at.map_or(now, |(r, _)| r);
            t.delete_at = Some((requested, deadline));
            t.pod.metadata.deletion_timestamp = Some(Time(wall));
            t.pod.metadata.deletion_grace_period_seconds = Some(grace);
        })
    }

    /// Deletes every pod matching the selectors, as `DELETE .../pods?labelSelector=...`.
    pub fn delete_collection(
        &self,
        ns: &str,
        selectors: &Selectors,
        grace: Option<i64>,
    ) -> Vec<Pod> {
        let mut state = self.lock();
        let keys: Vec<Key> = state
            .pods
            .iter()
            .filter(|(k, t)| k.0 == ns && selectors.matches(&t.pod))
            .map(|(k, _)| k.clone())
            .collect();
        let out = keys
            .iter()
            .filter_map(|k| Self::delete_locked(&mut state, k, grace))
            .collect();
        drop(state);
        self.changed.notify_one();
        out
    }
}

fn jiff_span_secs(secs: i64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_secs(secs)
}
