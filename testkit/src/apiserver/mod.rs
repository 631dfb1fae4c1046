//! A fake Kubernetes API server for core/v1 pods, speaking real HTTP/JSON on 127.0.0.1, with a
//! simulated scheduler and kubelet behind it. Tests point the real `kube` client at
//! [`FakeApiServer::url`]; no cluster, container runtime or kube-apiserver is involved.
//! Spark's own Kubernetes client (fabric8) works against it too: watches are also served
//! over WebSocket (`websocket.rs`), and the ConfigMaps, Secrets, Services and
//! PersistentVolumeClaims Spark creates and deletes by label are kept (`objects.rs`). What is
//! left out is listed in `testkit/README.md`; [`FakeApiServer::requests`] logs what a client
//! sent.
//!
//! What it implements (see `http.rs` for the routes): create, get, list (label and field
//! selectors, `limit`/`continue`), watch (`resourceVersion`, `allowWatchBookmarks`,
//! `timeoutSeconds`), delete (grace periods, preconditions), delete-collection, merge patch
//! and replace, with `Status` errors shaped as the real server's (404 NotFound, 409
//! AlreadyExists/Conflict, 410 Expired/Gone, 422 Invalid, 400 BadRequest). What it leaves out:
//! other resources, authentication, server-side apply, JSON patch, strategic list merging,
//! validating admission, quotas, pod restarts inside the kubelet.
//!
//! Beside pods: mutating admission webhooks called over HTTPS on pod create, with the
//! Namespaces whose labels they select on (`admission/`), and apps/v1 DaemonSets with a
//! DaemonSet controller that keeps one pod per simulated node (`daemonsets.rs`).
//!
//! Faults: [`Outage`]s (connections refused, or every request answered 500/503) for as long as
//! a test wants, unschedulable pods (capacity), per-request latency. Counters of API calls by
//! verb ([`Calls`]) let tests bound how many requests a client makes.

mod admission;
mod audit;
mod daemonsets;
mod http;
mod kubelet;
mod logs;
mod merge;
mod objects;
mod openapi;
mod quantity;
mod selector;
mod serve;
mod sim;
mod status;
mod store;
mod typed;
mod websocket;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, Pod};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::audit::Record;
pub use self::kubelet::ProcessKubelet;
pub use self::objects::Resource;
pub use self::selector::{FieldSelector, LabelSelector, Selectors};
pub use self::sim::{Latencies, Node, pod_requests};
pub use self::status::Error;
use self::store::Store;

/// An injected API-server failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The port is closed: new connections are refused, open ones (watches included) are cut.
    Refuse,
    /// Every request is answered `503 ServiceUnavailable`; open watches end.
    Unavailable,
    /// Every request is answered `500 InternalError`; open watches end.
    InternalError,
}

/// The `reason` of 410 answers to a too-old `resourceVersion` or `continue` token.
///
/// The watch cache of current servers says `Expired`; older servers and some paths that read
/// etcd directly said `Gone`. Clients must treat both alike (code 410).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiredReason {
    /// `reason: Expired`.
    #[default]
    Expired,
    /// `reason: Gone`.
    Gone,
}

impl ExpiredReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "Expired",
            Self::Gone => "Gone",
        }
    }
}

/// An API verb, as the counters count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

const VERBS: usize = 8;

impl Verb {
    fn index(self) -> usize {
        self as usize
    }
}

/// A snapshot of API calls received, by verb (including those answered with an error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// GET of one object.
    pub get: u64,
    /// Lists.
    pub list: u64,
    /// Watches started.
    pub watch: u64,
    /// Creates.
    pub create: u64,
    /// Replaces.
    pub update: u64,
    /// Patches.
    pub patch: u64,
    /// Deletes of one object.
    pub delete: u64,
    /// Deletes of a collection.
    pub delete_collection: u64,
}

impl Calls {
    /// Every call.
    pub fn total(&self) -> u64 {
        self.get
            + self.list
            + self.watch
            + self.create
            + self.update
            + self.patch
            + self.delete
            + self.delete_collection
    }
}

/// State shared by the HTTP layer, the simulation and the handle.
#[derive(Debug)]
struct Shared {
    store: Store,
    calls: [AtomicU64; VERBS],
    outage: watch::Sender<Option<Outage>>,
    api_latency_micros: AtomicU64,
    bookmark_interval: Duration,
    max_watch: Duration,
    nodes: Mutex<Vec<Node>>,
    cancel: CancellationToken,
    requests: audit::Log,
    /// Whether the simulated kubelet starts and removes pods (false with a process kubelet).
    simulated_kubelet: bool,
    /// Mutating webhooks, namespaces, Service addresses (`admission/`).
    admission: admission::Admission,
    /// DaemonSets and their controller's state (`daemonsets.rs`).
    daemonsets: daemonsets::DaemonSets,
}

impl Shared {
    /// Counts the call, waits the configured latency, and answers an injected outage.
    async fn admit(&self, verb: Verb) -> Result<(), Error> {
        if let Some(c) = self.calls.get(verb.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let latency = Duration::from_micros(self.api_latency_micros.load(Ordering::Relaxed));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match *self.outage.borrow() {
            Some(Outage::Unavailable) => Err(Error::Unavailable),
            Some(Outage::InternalError) => Err(Error::Internal),
            Some(Outage::Refuse) | None => Ok(()),
        }
    }
}

/// Configures a [`FakeApiServer`].
#[derive(Debug, Clone)]
pub struct Builder {
    history_limit: usize,
    nodes: Vec<Node>,
    latencies: Latencies,
    api_latency: Duration,
    bookmark_interval: Duration,
    max_watch: Duration,
    expired_reason: ExpiredReason,
    kubelet: Option<ProcessKubelet>,
    services: Vec<(String, String, SocketAddr)>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            nodes: vec![Node::new("node-1", 64, 256)],
            latencies: Latencies::default(),
            api_latency: Duration::ZERO,
            bookmark_interval: Duration::from_secs(1),
            max_watch: Duration::from_secs(1800),
            expired_reason: ExpiredReason::default(),
            kubelet: None,
            services: Vec::new(),
        }
    }
}

impl Builder {
    /// How many watch events are kept; older `resourceVersion`s get 410.
    pub fn history_limit(mut self, events: usize) -> Self {
        self.history_limit = events.max(1);
        self
    }

    /// The nodes pods can be scheduled on (replaces the default single large node).
    pub fn nodes(mut self, nodes: Vec<Node>) -> Self {
        self.nodes = nodes;
        self
    }

    /// Latencies of the simulated scheduler and kubelet.
    pub fn latencies(mut self, latencies: Latencies) -> Self {
        self.latencies = latencies;
        self
    }

    /// Added to every API request before it is answered.
    pub fn api_latency(mut self, latency: Duration) -> Self {
        self.api_latency = latency;
        self
    }

    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The longest a watch stays open when the client does not ask for less.
    pub fn max_watch(mut self, max: Duration) -> Self {
        self.max_watch = max;
        self
    }

    /// The `reason` of 410 answers.
    pub fn expired_reason(mut self, reason: ExpiredReason) -> Self {
        self.expired_reason = reason;
        self
    }

    /// Runs pods as local processes with a [`ProcessKubelet`] instead of only marking them
    /// Running (see `kubelet.rs` for what it can run).
    pub fn process_kubelet(mut self, kubelet: ProcessKubelet) -> Self {
        self.kubelet = Some(kubelet);
        self
    }

    /// Maps a Service named in a webhook's `clientConfig.service` to the address its calls
    /// connect to (see `admission/mod.rs`); also [`FakeApiServer::set_service_address`].
    pub fn webhook_service(
        mut self,
        namespace: impl Into<String>,
        name: impl Into<String>,
        addr: SocketAddr,
    ) -> Self {
        self.services.push((namespace.into(), name.into(), addr));
        self
    }

    /// Binds 127.0.0.1:0 and starts serving and simulating.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(self) -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (outage, _) = watch::channel(None);
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            store: Store::new(self.history_limit, self.expired_reason),
            calls: Default::default(),
            outage,
            api_latency_micros: AtomicU64::new(
                u64::try_from(self.api_latency.as_micros()).unwrap_or(u64::MAX),
            ),
            bookmark_interval: self.bookmark_interval,
            max_watch: self.max_watch,
            nodes: Mutex::new(self.nodes),
            cancel: cancel.clone(),
            requests: audit::Log::default(),
            simulated_kubelet: self.kubelet.is_none(),
            admission: admission::Admission::default(),
            daemonsets: daemonsets::DaemonSets::default(),
        });
        for (ns, name, addr) in &self.services {
            shared.admission.set_service_address(ns, name, *addr);
        }
        let tasks = TaskTracker::new();
        let app = http::router(Arc::clone(&shared))
            .merge(objects::router(Arc::clone(&shared)))
            .merge(admission::router(Arc::clone(&shared)))
            .merge(daemonsets::router(Arc::clone(&shared)))
            .merge(openapi::router())
            .merge(logs::router(Arc::clone(&shared), self.kubelet.clone()))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                audit::record,
            ));
        tasks.spawn(serve::serve(
            listener,
            app,
            Arc::clone(&shared),
            tasks.clone(),
        ));
        tasks.spawn(run_sim(Arc::clone(&shared), self.latencies));
        tasks.spawn(daemonsets::run(Arc::clone(&shared)));
        let procs = self.kubelet.map(|kubelet| {
            let procs = Arc::new(kubelet::Procs::default());
            tasks.spawn(kubelet::run(
                Arc::clone(&shared),
                kubelet,
                Arc::clone(&procs),
                addr,
            ));
            procs
        });
        Ok(FakeApiServer {
            shared,
            addr,
            tasks,
            procs,
        })
    }
}

async fn run_sim(shared: Arc<Shared>, latencies: Latencies) {
    loop {
        let next = {
            let nodes = shared
                .nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut state = shared.store.lock();
            sim::step(
                &mut state,
                &nodes,
                &latencies,
                tokio::time::Instant::now(),
                shared.simulated_kubelet,
            )
        };
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            () = shared.cancel.cancelled() => return,
            () = shared.store.changed.notified() => {}
            () = tokio::time::sleep_until(next.unwrap_or(far)) => {}
        }
    }
}

/// A running fake API server. Dropping it stops it.
#[derive(Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: TaskTracker,
    /// The processes of a process kubelet, killed on drop.
    procs: Option<Arc<kubelet::Procs>>,
}

impl FakeApiServer {
    /// A builder with defaults: one node of 64 CPUs and 256 GiB, millisecond latencies,
    /// 10,000 events of history.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts a server with the defaults.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        Builder::default().start().await
    }

    /// `http://127.0.0.1:PORT`, the `cluster_url` for a `kube::Config`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML text) whose current context points at this server with `namespace`
    /// as its default namespace and no credentials: what a test writes to a file and passes
    /// to a binary in `KUBECONFIG`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: test\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: test\n    namespace: {namespace}\n\
             current-context: fake\n",
            self.url()
        )
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// API calls received so far.
    pub fn calls(&self) -> Calls {
        let get = |v: Verb| {
            self.shared
                .calls
                .get(v.index())
                .map_or(0, |c| c.load(Ordering::Relaxed))
        };
        Calls {
            get: get(Verb::Get),
            list: get(Verb::List),
            watch: get(Verb::Watch),
            create: get(Verb::Create),
            update: get(Verb::Update),
            patch: get(Verb::Patch),
            delete: get(Verb::Delete),
            delete_collection: get(Verb::DeleteCollection),
        }
    }

    /// The most pods that were Pending (and not being deleted) at once, in any namespace.
    pub fn max_pending(&self) -> u64 {
        self.shared.store.lock().max_pending()
    }

    /// The current `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().rv()
    }

    /// The pods of a namespace, sorted by name (not counted as API calls).
    pub fn pods(&self, ns: &str) -> Vec<Pod> {
        self.shared
            .store
            .lock()
            .pods
            .iter()
            .filter(|(k, _)| k.0 == ns)
            .map(|(_, t)| t.pod.clone())
            .collect()
    }

    /// The pods of every namespace, sorted by namespace and name (not counted as API calls).
    pub fn all_pods(&self) -> Vec<Pod> {
        self.shared
            .store
            .lock()
            .pods
            .values()
            .map(|t| t.pod.clone())
            .collect()
    }

    /// The requests received so far (the last [`audit::MAX_RECORDS`]), oldest first.
    pub fn requests(&self) -> Vec<Record> {
        self.shared.requests.records()
    }

    /// The stored objects of a resource other than pods in a namespace, sorted by name,
    /// as the API serves them (not counted as API calls).
    pub fn objects(&self, resource: Resource, ns: &str) -> Vec<serde_json::Value> {
        self.shared
            .store
            .lock()
            .objects
            .iter()
            .filter(|((r, n, _), _)| *r == resource && n == ns)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// One pod, if it exists (not counted).
    pub fn pod(&self, ns: &str, name: &str) -> Option<Pod> {
        self.shared.store.get(ns, name).ok()
    }

    /// Creates a pod directly, e.g. a driver pod fixture (not counted).
    ///
    /// # Errors
    /// As a create through the API would.
    pub fn insert_pod(&self, ns: &str, pod: Pod) -> Result<Pod, Error> {
        self.shared.store.create(ns, pod)
    }

    /// Maps a Service named in a webhook's `clientConfig.service` to the address its calls
    /// connect to, replacing an earlier mapping.
    pub fn set_service_address(&self, namespace: &str, name: &str, addr: SocketAddr) {
        self.shared
            .admission
            .set_service_address(namespace, name, addr);
    }

    /// How many mutating webhook calls were made so far (answered or not).
    pub fn webhook_calls(&self) -> u64 {
        self.shared.admission.calls()
    }

    /// Adds a node to the simulated cluster.
    pub fn add_node(&self, node: Node) {
        self.shared
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(node);
        self.shared.store.changed.notify_one();
    }

    /// Sets the latency added to every API request.
    pub fn set_api_latency(&self, latency: Duration) {
        self.shared.api_latency_micros.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Starts an outage; it lasts until [`Self::end_outage`].
    pub fn start_outage(&self, outage: Outage) {
        self.shared.outage.send_replace(Some(outage));
    }

    /// Ends an outage.
    pub fn end_outage(&self) {
        self.shared.outage.send_replace(None);
    }

    /// An outage for a window of time: starts now, ends after `duration` (on the tokio
    /// clock, so a paused test clock controls it).
    pub fn outage_for(&self, outage: Outage, duration: Duration) {
        self.start_outage(outage);
        let shared = Arc::clone(&self.shared);
        self.tasks.spawn(async move {
            tokio::select! {
                () = shared.cancel.cancelled() => {}
                () = tokio::time::sleep(duration) => {
                    shared.outage.send_if_modified(|o| {
                        let was = o.is_some();
                        *o = None;
                        was
                    });
                }
            }
        });
    }

    /// Terminates a pod's containers: phase `Failed` (non-zero `exit_code`) or `Succeeded`
    /// (zero), as a kubelet reports an exited container. Returns false if there is no such pod.
    pub fn exit_pod(&self, ns: &str, name: &str, exit_code: i32) -> bool {
        let phase = if exit_code == 0 {
            "Succeeded"
        } else {
            "Failed"
        };
        self.set_terminal(ns, name, phase, None, exit_code)
    }

    /// Evicts a pod: phase `Failed`, `status.reason: Evicted`, as the kubelet does under node
    /// pressure. Returns false if there is no such pod.
    pub fn evict_pod(&self, ns: &str, name: &str) -> bool {
        self.set_terminal(ns, name, "Failed", Some("Evicted"), 137)
    }

    fn set_terminal(
        &self,
        ns: &str,
        name: &str,
        phase: &str,
        reason: Option<&str>,
        exit_code: i32,
    ) -> bool {
        let key = (ns.to_owned(), name.to_owned());
        let mut state = self.shared.store.lock();
        let done = state
            .modify_meta(&key, |t| {
                let st = t.pod.status.get_or_insert_with(Default::default);
                st.phase = Some(phase.to_owned());
                st.reason = reason.map(str::to_owned);
                if reason.is_some() {
                    st.message = Some("The node was low on resource: memory.".into());
                }
                for cs in st.container_statuses.iter_mut().flatten() {
                    cs.ready = false;
                    cs.state = Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code,
                            reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.into()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    });
                }
            })
            .is_some();
        drop(state);
        self.shared.store.changed.notify_one();
        done
    }

    /// Stops serving and simulating, and waits for every task to end.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        // Synchronously: a test that panics must not leave JVMs behind.
        if let Some(procs) = &self.procs {
            procs.kill_all();
        }
    }
}
