//! Prometheus metrics: the registry, the HTTP series, and the middleware that records them.
//! The sandbox series live in [`sandbox`]; the body's format in [`exposition`].
//!
//! Routes are labelled by their template (`/sandboxes/{id}`), never the raw path, so label
//! values stay bounded whatever clients send; requests that match no route share `unmatched`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod exposition;
pub mod sandbox;

use crate::error::QuotaViolation;
use crate::state::AppState;
pub use sandbox::{program_name, SandboxSeries, SandboxUsage};

/// Labels of `http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
}

/// Labels of `http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Labels of `quota_violations_total`: which quota.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    r#type: String,
}

/// Labels of `snapshot_created_total`: why it was taken.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnapshotKindLabels {
    kind: String,
}

/// Labels of `preview_target_connections_total`: `socket` (handed over by the agent) or
/// `piped` (through the agent).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PreviewConnectionLabels {
    path: String,
}

/// Labels of `snapshot_duration_seconds`: `create`, `restore` or `import`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnapshotOperationLabels {
    operation: String,
}

fn snapshot_duration_histogram() -> Histogram {
    // 1 ms to about 2 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// Every metric the server exports, registered once.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: HistogramFamily,
    snapshots_created: Family<SnapshotKindLabels, Counter>,
    snapshots_restored: Counter,
    snapshot_size: Histogram,
    snapshot_duration: Family<SnapshotOperationLabels, Histogram, fn() -> Histogram>,
    terminal_sessions: Gauge,
    terminal_connections: Gauge,
    terminal_resyncs: Counter,
    quota_violations: Family<QuotaLabels, Counter>,
    sandboxes: SandboxSeries,
    preview_promotions: Counter,
    preview_connections: Family<PreviewConnectionLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    // 100 µs to about 13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Metrics {
    /// A registry with the HTTP series in it.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route template",
            http_duration.clone(),
        );
        let snapshots_created = Family::<SnapshotKindLabels, Counter>::default();
        let snapshot_duration: Family<SnapshotOperationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(snapshot_duration_histogram);
        registry.register(
            "snapshot_duration_seconds",
            "Time to create, restore or import a snapshot, by operation",
            snapshot_duration.clone(),
        );
        let snapshots_restored = Counter::default();
        // 4 KiB to about 64 GiB.
        let snapshot_size = Histogram::new(exponential_buckets(4096.0, 4.0, 13));
        registry.register(
            "snapshot_created",
            "Snapshots durably stored, by kind (manual, idle, daily, import)",
            snapshots_created.clone(),
        );
        registry.register("snapshot_restored", "Snapshots restored into a workspace", snapshots_restored.clone());
        registry.register("snapshot_size_bytes", "Stored size of new snapshots, bytes", snapshot_size.clone());
        let terminal_sessions = Gauge::default();
        let terminal_connections = Gauge::default();
        let terminal_resyncs = Counter::default();
        registry.register(
            "terminal_sessions_active",
            "Terminal sessions whose shell is running, with or without viewers",
            terminal_sessions.clone(),
        );
        registry.register(
            "terminal_connections_active",
            "Terminal WebSocket connections attached to a session",
            terminal_connections.clone(),
        );
        registry.register(
            "terminal_viewer_resyncs",
            "Times a terminal viewer fell behind the output queue and was sent a repaint instead",
            terminal_resyncs.clone(),
        );
        let quota_violations = Family::<QuotaLabels, Counter>::default();
        registry.register(
            "quota_violations",
            "Quota violations by quota type: requests refused with 429, and sandboxes whose egress reached its limit (type egress, once each)",
            quota_violations.clone(),
        );
        let sandboxes = SandboxSeries::register(&mut registry);
        let preview_promotions = Counter::default();
        registry.register(
            "preview_fallback_promotions",
            "Times a preview's requests moved to its fallback sandbox because the primary failed",
            preview_promotions.clone(),
        );
        let preview_connections = Family::<PreviewConnectionLabels, Counter>::default();
        registry.register(
            "preview_target_connections",
            "Connections opened to preview targets, by how the bytes travel (socket: the agent handed over the sandbox's socket; piped: through the agent). With a working pool this grows with concurrent clients, not with requests",
            preview_connections.clone(),
        );
        Metrics {
            preview_connections,
            quota_violations,
            sandboxes,
            registry: Arc::new(registry),
            http_requests,
            http_duration,
            snapshots_created,
            snapshots_restored,
            snapshot_size,
            snapshot_duration,
            terminal_sessions,
            terminal_connections,
            terminal_resyncs,
            preview_promotions,
        }
    }

    /// Counts a snapshot that was stored; passes the result through.
    pub fn snapshot_created<E>(
        &self,
        result: Result<cloudterm_domain::snapshots::Snapshot, E>,
    ) -> Result<cloudterm_domain::snapshots::Snapshot, E> {
        if let Ok(snapshot) = &result {
            self.snapshot_stored(snapshot);
        }
        result
    }

    /// Counts a stored snapshot (any kind) and its size.
    pub fn snapshot_stored(&self, snapshot: &cloudterm_domain::snapshots::Snapshot) {
        self.snapshots_created.get_or_create(&SnapshotKindLabels { kind: snapshot.kind.clone() }).inc();
        let layer = snapshot.layer.as_ref().map_or(0, |layer| layer.stored_bytes);
        self.snapshot_size.observe(snapshot.stored_bytes.saturating_add(layer) as f64);
    }

    /// Records how long a snapshot operation took (successful or not).
    pub fn snapshot_took(&self, operation: &str, started: Instant) {
        self.snapshot_duration
            .get_or_create(&SnapshotOperationLabels { operation: operation.to_string() })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts a restore.
    pub fn snapshot_restored(&self) {
        self.snapshots_restored.inc();
    }

    /// Counts a quota violation that no 429 carries (a sandbox's egress reaching its limit).
    pub fn quota_violated(&self, kind: &str) {
        self.quota_violations.get_or_create(&QuotaLabels { r#type: kind.to_string() }).inc();
    }

    /// Counts a new connection to a preview target.
    pub fn preview_connection_opened(&self, handed_over: bool) {
        let path = if handed_over { "socket" } else { "piped" };
        self.preview_connections.get_or_create(&PreviewConnectionLabels { path: path.to_owned() }).inc();
    }

    /// The sandbox series.
    pub fn sandboxes(&self) -> &SandboxSeries {
        &self.sandboxes
    }

    /// The exposition text for `GET /metrics`, in the Prometheus text format (0.0.4).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(exposition::to_prometheus_text(&text))
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels { method: method.to_string(), route: route.to_string() })
            .observe(seconds);
    }
}

/// The terminal hub reports its sessions and viewers here.
impl cloudterm_terminal::Observer for Metrics {
    fn session_started(&self) {
        self.terminal_sessions.inc();
    }

    fn session_ended(&self) {
        self.terminal_sessions.dec();
    }

    fn viewer_attached(&self) {
        self.terminal_connections.inc();
    }

    fn viewer_detached(&self) {
        self.terminal_connections.dec();
    }

    fn viewer_resynced(&self) {
        self.terminal_resyncs.inc();
    }
}

/// The preview service reports fallback promotions here.
impl cloudterm_domain::previews::PreviewObserver for Metrics {
    fn promoted(&self, _sandbox_id: &str, _port: u16, _fallback: &str) {
        self.preview_promotions.inc();
    }

    fn restored(&self, _sandbox_id: &str, _port: u16) {}
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Middleware: counts and times every request under its route template.
pub async fn track_http(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    if let Some(QuotaViolation(kind)) = response.extensions().get::<QuotaViolation>() {
        state.metrics.quota_violations.get_or_create(&QuotaLabels { r#type: (*kind).to_string() }).inc();
    }
    state.metrics.observe(&method, &route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}
