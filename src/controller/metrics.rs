//! Prometheus metrics, and the small HTTP endpoint that serves them with `/healthz` and
//! `/readyz`. Hand-rolled HTTP/1.1: three GET routes do not justify a web framework.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
    /// The first reconcile converged the node.
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

/// Connections served at once by the metrics endpoint.
const MAX_CONNECTIONS: usize = 64;

/// Serves `/metrics`, `/healthz` (a pass finished within `stale_after`) and `/readyz` (the
/// node was converged once) on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stale_after: Duration) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // At most MAX_CONNECTIONS at once (each lasts at most 5 s reading, 5 s writing): a
        // flood of idle connections must not cost the controller memory or descriptors.
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of descriptors, say: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut request = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            // Read the request head only, bounded in size and time.
            let head = tokio::time::timeout(Duration::from_secs(5), async {
                while !request.windows(4).any(|window| window == b"\r\n\r\n")
                    && request.len() < 8192
                {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&chunk[..read]),
                    }
                }
            })
            .await;
            if head.is_err() {
                return;
            }
            let line = String::from_utf8_lossy(&request);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.encode()),
                "/healthz" if metrics.healthy(stale_after) => ("200 OK", "ok\n".to_string()),
                "/healthz" => (
                    "503 Service Unavailable",
                    "the reconcile loop is stalled\n".to_string(),
                ),
                "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
                    ("200 OK", "ok\n".to_string())
                }
                "/readyz" => ("503 Service Unavailable", "not converged yet\n".to_string()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let content_type = if path == "/metrics" {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; charset=utf-8"
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            // A client that does not read its answer gives its turn up after 5 s too.
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                stream.write_all(response.as_bytes()),
            )
            .await;
        });
    }
}

/// Binds the metrics address, with a clear error.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|error| format!("cannot listen on --metrics-addr {address}: {error}"))
}
