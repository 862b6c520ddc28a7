//! Which routes each listener serves, and the OpenAPI document built from the same list.
//!
//! Routes are registered only through `utoipa_axum::routes!`, so a route and its entry in the
//! OpenAPI document are one registration; a test fails if a route is added any other way.

use std::sync::LazyLock;

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDocument;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::middleware;
use crate::routes::{console, health, identity, marketplace, previews, sandboxes, snapshots, terminal, workspaces};
use crate::state::AppState;

/// The services a listener can serve. Identity, health, metrics and docs come with every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The Sandbox API and the terminal.
    Sandbox,
    /// The Snapshot API.
    Snapshot,
    /// The Agent Workspace API and the marketplace.
    Workspace,
    /// The preview router.
    Preview,
}

impl Service {
    /// Every service.
    pub const ALL: [Service; 4] = [Service::Sandbox, Service::Snapshot, Service::Workspace, Service::Preview];

    /// The name used in config keys and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Sandbox => "sandbox",
            Service::Snapshot => "snapshot",
            Service::Workspace => "workspace",
            Service::Preview => "preview",
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cloudterm",
        description = "Isolated sandboxes, workspaces, snapshots, terminals and previews over HTTP.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(
        cloudterm_api_types::ErrorEnvelope,
        cloudterm_api_types::ErrorBody,
        cloudterm_api_types::TerminalClientMessage,
        cloudterm_api_types::TerminalServerMessage
    ))
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the protected routes refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDocument) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// Routes exempt from `http.request_timeout_seconds`: they stream, or bound their own run
/// time (an exec's `timeout_seconds`). The terminal answers its upgrade at once, but opening
/// a session waits for the agent, and the WebSocket after it lives as long as the client.
pub const UNTIMED_ROUTES: &[&str] = &[
    "/sandboxes/{id}/exec",
    "/sandboxes/{id}/files/{*path}",
    "/sandboxes/{id}/background/{job_id}/logs",
    "/sandboxes/{id}/terminal",
    "/workspaces/{id}/exec",
    "/workspaces/{id}/workers/{worker_id}/run",
    "/snapshot/create",
    "/snapshot/restore",
    "/snapshot/import",
    "/snapshot/{snapshot_id}/download",
    "/preview/{sandbox_id}/{port}/",
    "/preview/{sandbox_id}/{port}/{*path}",
];

/// Routes every listener serves: health, metrics, identity.
fn common_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .routes(routes!(identity::get_me))
        .routes(routes!(identity::get_jwks))
        .routes(routes!(identity::mint_dev_token))
}

/// The routes of one service. The sandbox, snapshot, workspace and preview issues fill these.
fn service_routes(service: Service) -> OpenApiRouter<AppState> {
    match service {
        Service::Sandbox => OpenApiRouter::new()
            .routes(routes!(sandboxes::create_sandbox, sandboxes::list_sandboxes))
            .routes(routes!(sandboxes::get_sandbox, sandboxes::delete_sandbox))
            .routes(routes!(sandboxes::exec_sandbox))
            .routes(routes!(sandboxes::write_file, sandboxes::list_files))
            .routes(routes!(sandboxes::upload_file, sandboxes::download_file))
            .routes(routes!(sandboxes::keepalive_sandbox))
            .routes(routes!(sandboxes::pause_sandbox))
            .routes(routes!(sandboxes::resume_sandbox))
            .routes(routes!(sandboxes::mount_sandbox))
            .routes(routes!(sandboxes::start_background, sandboxes::list_background))
            .routes(routes!(sandboxes::background_logs))
            .routes(routes!(sandboxes::stop_background))
            .routes(routes!(terminal::terminal))
            .routes(routes!(previews::create_sandbox_preview)),
        Service::Snapshot => OpenApiRouter::new()
            .routes(routes!(snapshots::create_snapshot))
            .routes(routes!(snapshots::restore_snapshot))
            .routes(routes!(snapshots::list_snapshots))
            .routes(routes!(snapshots::get_snapshot, snapshots::delete_snapshot))
            .routes(routes!(snapshots::pin_snapshot))
            .routes(routes!(snapshots::download_snapshot))
            .routes(routes!(snapshots::import_snapshot)),
        Service::Workspace => OpenApiRouter::new()
            .routes(routes!(workspaces::create_workspace, workspaces::list_workspaces))
            .routes(routes!(workspaces::get_workspace, workspaces::delete_workspace))
            .routes(routes!(workspaces::exec_workspace))
            .routes(routes!(workspaces::share_workspace))
            .routes(routes!(workspaces::revoke_share))
            .routes(routes!(workspaces::list_collaborators))
            .routes(routes!(workspaces::workspace_audit))
            .routes(routes!(workspaces::run_worker))
            .routes(routes!(marketplace::publish_worker))
            .routes(routes!(marketplace::search_workers))
            .routes(routes!(marketplace::get_worker)),
        Service::Preview => OpenApiRouter::new()
            .routes(routes!(previews::register_preview))
            .routes(routes!(previews::list_previews))
            .routes(routes!(previews::unregister_preview))
            .routes(routes!(previews::create_preview_link))
            .routes(routes!(previews::proxy_bare))
            .routes(routes!(previews::proxy_root))
            .routes(routes!(previews::proxy_path)),
    }
}

/// The routes and OpenAPI document of a listener serving `services`.
pub fn api(services: &[Service]) -> (Router<AppState>, OpenApiDocument) {
    let mut router = common_routes();
    for service in services {
        router = router.merge(service_routes(*service));
    }
    let (router, mut document) = router.split_for_parts();
    // axum spells a catch-all segment `{*path}`; OpenAPI knows only `{path}`.
    let paths = std::mem::take(&mut document.paths.paths);
    document.paths.paths = paths.into_iter().map(|(path, item)| (path.replace("{*", "{"), item)).collect();
    (router, document)
}

/// The OpenAPI document of a listener serving every service (what `/openapi.json` shows on
/// the main listener).
pub fn openapi() -> OpenApiDocument {
    api(&Service::ALL).1
}

/// A complete application for one listener: routes, docs (`/docs`, `/redoc`, `/openapi.json`,
/// all assets served from the binary), the browser console at `/` where the listener serves
/// the Sandbox API it drives, the shared middleware and, with `preview.domain`, previews at
/// their subdomains (`preview::host`).
pub fn app(state: &AppState, services: &[Service]) -> Router {
    let (routes, document) = api(services);
    let mut routes =
        routes.merge(SwaggerUi::new("/docs").url("/openapi.json", document.clone())).route("/redoc", get(redoc_page));
    if services.contains(&Service::Sandbox) {
        routes = routes.merge(console::routes());
    }
    let app = middleware::wrap(routes, state);
    if state.config.preview.domain.is_none() {
        return app;
    }
    // Preview subdomains are recognised before routing (they take the path form's route), so
    // this layer wraps the whole router rather than its routes.
    let by_host = axum::middleware::from_fn_with_state(state.clone(), crate::preview::host::route_subdomain);
    Router::new().fallback_service(tower::Layer::layer(&by_host, app))
}

/// The ReDoc page: self-contained, with ReDoc's script inline (vendored in the `aide` crate),
/// so it loads nothing from a third-party host. Built once, on first use.
static REDOC_PAGE: LazyLock<String> =
    LazyLock::new(|| aide::redoc::Redoc::new("/openapi.json").with_title("cloudterm API").html());

async fn redoc_page() -> Html<&'static str> {
    Html(REDOC_PAGE.as_str())
}
