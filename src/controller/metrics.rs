//! Prometheus metrics, and the small HTTP endpoint that serves them with `/healthz` and
//! `/readyz`: hyper's HTTP/1 server (a parser that has seen the world's clients), with a
//! timeout on the request head, a lifetime per connection and a bounded number of them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::ControllerError;
use crate::reconcile::Phase;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabel {
    pub condition: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

/// Everything the controller reports.
pub struct Metrics {
    registry: Registry,
    pub reconcile_duration: Histogram,
    pub reconciles: Family<ResultLabel, Counter>,
    pub actions: Family<KindLabel, Counter>,
    pub drift_repairs: Counter,
    pub instances: Family<PhaseLabel, Gauge>,
    pub last_success: Gauge<f64, AtomicU64>,
    pub desired_valid: Gauge,
    pub conditions: Family<ConditionLabel, Gauge>,
    /// The loop is alive: it finished a pass recently.
    pub last_pass: Mutex<Option<std::time::Instant>>,
    /// The last pass converged the node as a whole (instances may fail on their own).
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kudonet");
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let reconciles = Family::<ResultLabel, Counter>::default();
        let actions = Family::<KindLabel, Counter>::default();
        let drift_repairs = Counter::default();
        let instances = Family::<PhaseLabel, Gauge>::default();
        let last_success = Gauge::<f64, AtomicU64>::default();
        let desired_valid = Gauge::default();
        let conditions = Family::<ConditionLabel, Gauge>::default();
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by result (converged, failed, invalid)",
            reconciles.clone(),
        );
        registry.register("actions", "Actions applied, by kind", actions.clone());
        registry.register(
            "drift_repairs",
            "Reconciles that repaired changes made behind kudonet's back",
            drift_repairs.clone(),
        );
        registry.register("instances", "Instances by phase", instances.clone());
        registry.register(
            "last_success_timestamp_seconds",
            "When a reconcile last converged the node (Unix time)",
            last_success.clone(),
        );
        registry.register(
            "desired_state_valid",
            "1 when the desired-state directory is valid",
            desired_valid.clone(),
        );
        registry.register(
            "node_conditions",
            "Node-wide conditions in force, by type (see the status document's conditions)",
            conditions.clone(),
        );
        Metrics {
            registry,
            reconcile_duration,
            reconciles,
            actions,
            drift_repairs,
            instances,
            last_success,
            desired_valid,
            conditions,
            last_pass: Mutex::new(None),
            ready: AtomicBool::new(false),
        }
    }

    pub fn count_reconcile(&self, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn set_phases(&self, phases: impl IntoIterator<Item = Phase>) {
        let mut counts = std::collections::HashMap::new();
        for phase in phases {
            *counts.entry(phase.to_string()).or_insert(0) += 1;
        }
        for phase in [Phase::Ready, Phase::Pending, Phase::Drifted, Phase::Failed] {
            let label = PhaseLabel {
                phase: phase.to_string(),
            };
            self.instances
                .get_or_create(&label)
                .set(counts.get(&label.phase).copied().unwrap_or(0));
        }
    }

    /// How many conditions of each type are in force; every type is exported, 0 when none.
    pub fn set_conditions(&self, conditions: &[crate::reconcile::Condition]) {
        for kind in crate::reconcile::CONDITION_TYPES {
            let count = conditions.iter().filter(|c| c.kind == *kind).count();
            self.conditions
                .get_or_create(&ConditionLabel {
                    condition: kind.to_string(),
                })
                .set(count as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Alive: a pass finished within `stale_after`.
    fn healthy(&self, stale_after: Duration) -> bool {
        let last = self.last_pass.lock().map(|last| *last).unwrap_or(None);
        last.is_some_and(|last| last.elapsed() < stale_after)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Whether the node is ready, asked afresh for each `/readyz`.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Connections open at once. Past it, the oldest is closed to make room for the newest:
/// a flood of idle or slow clients costs a bounded number of descriptors and never keeps a
/// probe waiting, since a probe's connection is answered as soon as its request arrives.
pub const MAX_CONNECTIONS: usize = 128;
/// A client has this long to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lasts longer, whatever the client does (not reading its answer, say).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// The open connections, oldest first (ids grow), to close when over the limit.
type Open = Arc<Mutex<BTreeMap<u64, tokio::task::AbortHandle>>>;

/// Takes a connection off the open list when its task ends, however it ends.
struct Registered {
    open: Open,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&self.id);
        }
    }
}

/// Serves `/metrics`, `/healthz` (a pass finished within `stale_after`) and `/readyz`
/// (`ready` says yes) on `listener` until the task is dropped. HTTP/1.1 by hyper, one
/// request per connection, each connection a task of its own.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stale_after: Duration,
    ready: Readiness,
) {
    let open: Open = Arc::default();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(8192)
        // Probes and scrapes open a connection each: none lingers idle afterwards.
        .keep_alive(false);
    let builder = Arc::new(builder);
    for id in 0u64.. {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let evicted = {
            let mut open = open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut evicted = Vec::new();
            while open.len() >= MAX_CONNECTIONS {
                evicted.extend(open.pop_first().map(|(_, handle)| handle));
            }
            evicted
        };
        for connection in evicted {
            connection.abort();
        }
        let (metrics, ready, builder) = (metrics.clone(), ready.clone(), builder.clone());
        let registered = Registered {
            open: open.clone(),
            id,
        };
        // Registered before the task can end, so that its end always unregisters it.
        let mut list = open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let task = tokio::spawn(async move {
            let _registered = registered;
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(&metrics, stale_after, &ready, request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
        list.insert(id, task.abort_handle());
        drop(list);
    }
}

/// The answer to a request for `path`.
fn respond(
    metrics: &Metrics,
    stale_after: Duration,
    ready: &Readiness,
    path: &str,
) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => (StatusCode::OK, metrics.encode()),
        "/healthz" if metrics.healthy(stale_after) => (StatusCode::OK, "ok\n".to_string()),
        "/healthz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the reconcile loop is stalled\n".to_string(),
        ),
        "/readyz" if ready() => (StatusCode::OK, "ok\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not converged: a change is being applied, or the node as a whole failed\n".to_string(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let content_type = if path == "/metrics" {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Binds the metrics address, with a clear error.
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener, ControllerError> {
    let listen = || {
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(listener)
    };
    listen().map_err(|source| ControllerError::Bind { address, source })
}

/// Serves the endpoint (see [`serve`]) from a thread and runtime of its own: probes are
/// answered at once even while the controller's loop is busy (reading a large directory,
/// say), which is what `/healthz` must not confuse with a stalled loop.
pub fn spawn(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    stale_after: Duration,
    ready: Readiness,
) -> Result<(), ControllerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ControllerError::MetricsServer)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, metrics, stale_after, ready).await,
                    Err(error) => tracing::error!(%error, "cannot serve metrics"),
                }
            });
        })
        .map(drop)
        .map_err(ControllerError::MetricsServer)
}
