//! The OpenAPI document and the served routes agree, and every non-public route needs a token.

use std::path::Path;

use cloudterm_test_support::TestServer;
use serde_json::Value;

use crate::support::*;

/// Operations deliberately served without a token (API.md "Conventions").
const PUBLIC: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/health/ready"),
    ("get", "/metrics"),
    ("get", "/.well-known/jwks.json"),
    // Dev issuer only, loopback only (docs/identity_config.md).
    ("post", "/dev/token"),
];

/// Paths whose access is decided per resource, not by a bearer token alone: the preview
/// proxy serves public previews to anyone and private ones to the owner's token or a signed
/// link (docs/api-design.md).
const PUBLIC_PREFIXES: &[&str] = &["/preview/{sandbox_id}/{port}"];

fn is_public(method: &str, path: &str) -> bool {
    PUBLIC.contains(&(method, path)) || PUBLIC_PREFIXES.iter().any(|prefix| path.starts_with(prefix))
}

fn operations(spec: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            out.push((method.clone(), path.clone(), operation.clone()));
        }
    }
    out
}

fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| if segment.starts_with('{') { "x_test" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

async fn call(server: &TestServer, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let mut request = reqwest::Client::new().request(method, server.url(&concrete(path)));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let server = TestServer::start().await;
    let (_, spec) = get(&server.url("/openapi.json"), None).await;
    let ops = operations(&spec);
    assert!(ops.len() >= 5, "the spec lists too little: {ops:?}");
    let token = server.token("spec-tester");
    for (method, path, _) in ops {
        let (status, body) = call(&server, &method, &path, Some(&token)).await;
        let fell_through = status == 405 || (status == 404 && body["error"]["message"] == "no such route");
        assert!(!fell_through, "{method} {path} is documented but not served ({status} {body})");
    }
}

#[tokio::test]
async fn every_route_but_the_public_ones_needs_a_token() {
    let server = TestServer::start().await;
    let (_, spec) = get(&server.url("/openapi.json"), None).await;
    for (method, path, operation) in operations(&spec) {
        let public = is_public(&method, &path);
        let declares_auth = operation["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_ne!(public, declares_auth, "{method} {path}: public={public} but security={}", operation["security"]);
        let (status, body) = call(&server, &method, &path, None).await;
        if public {
            assert_ne!(status, 401, "{method} {path} is public but asked for a token");
        } else {
            assert_unauthorized(&format!("{method} {path} without a token"), status, &body);
            let (status, body) = call(&server, &method, &path, Some("garbage")).await;
            assert_unauthorized(&format!("{method} {path} with garbage"), status, &body);
        }
    }
}

/// The only lines allowed to register routes outside the OpenAPI router: user interfaces, not
/// API operations (the ReDoc page and the browser console's page and files), and the wrapper
/// that recognises preview subdomains before routing (it adds no route: every request goes
/// on to the OpenAPI router, a subdomain one rewritten to the path form's route).
const UI_ROUTES: &[&str] = &[
    "routes.merge(SwaggerUi::new(\"/docs\").url(\"/openapi.json\", document.clone())).route(\"/redoc\", get(redoc_page));",
    "Router::new().route(\"/\", get(index)).route(\"/console/{name}\", get(asset))",
    "Router::new().fallback_service(tower::Layer::layer(&by_host, app))",
];

#[test]
fn routes_are_only_registered_through_the_openapi_router() {
    // A route added with axum's own `.route(..)` would be served but missing from the spec.
    // Only `utoipa_axum::routes!` registrations may add routes in the server's source.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read file");
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for needle in
                    [".route(", ".route_service(", ".nest(", ".nest_service(", " Router::new()", "(Router::new()"]
                {
                    let ui_route = UI_ROUTES.iter().any(|allowed| code.trim() == *allowed);
                    if code.contains(needle) && !ui_route {
                        offenders.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(offenders.is_empty(), "routes registered outside the OpenAPI router:\n{}", offenders.join("\n"));
}

#[tokio::test]
async fn docs_are_served_without_any_third_party_host() {
    let server = TestServer::start().await;
    for page in ["/docs/", "/redoc"] {
        let response = reqwest::get(server.url(page)).await.expect("page");
        assert_eq!(response.status(), 200, "{page}");
        let html = response.text().await.expect("html");
        for tag in
            ["<script src=\"http", "<script src='http", "<link rel=\"stylesheet\" href=\"http", "@import url(http"]
        {
            assert!(!html.contains(tag), "{page} loads from a third-party host: {tag}");
        }
    }
    // ReDoc's script is inline and points at our own spec.
    let redoc = reqwest::get(server.url("/redoc")).await.expect("redoc").text().await.expect("html");
    assert!(redoc.contains("Redoc.init(\"/openapi.json\"") && redoc.len() > 500_000, "ReDoc is not self-contained");
    // Swagger UI's assets come from the binary.
    let css = reqwest::get(server.url("/docs/swagger-ui.css")).await.expect("css");
    assert_eq!(css.status(), 200);
    let js = reqwest::get(server.url("/docs/swagger-ui-bundle.js")).await.expect("js");
    assert_eq!(js.status(), 200);
    assert!(js.bytes().await.expect("js body").len() > 100_000);
}

#[test]
fn the_checked_in_openapi_document_is_current() {
    // docs/openapi.json is the contract SDKs are generated from; it must equal what the server
    // serves. Regenerate with CLOUDTERM_UPDATE_OPENAPI=1 cargo test -p cloudterm-server --test it openapi
    let generated = serde_json::to_string_pretty(&cloudterm_server::router::openapi()).expect("serialize") + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("CLOUDTERM_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is stale: regenerate it with CLOUDTERM_UPDATE_OPENAPI=1 cargo test -p cloudterm-server --test it openapi"
    );
}

#[test]
fn path_parameters_are_in_their_path_and_query_parameters_are_not() {
    // A query struct without `parameter_in = Query` is documented as a (required) path
    // parameter, which generated clients then put into the URL path.
    let spec = serde_json::to_value(cloudterm_server::router::openapi()).expect("serialize");
    for (method, path, operation) in operations(&spec) {
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let name = parameter["name"].as_str().unwrap_or_default();
            let placeholder = format!("{{{name}}}");
            match parameter["in"].as_str() {
                Some("path") => {
                    assert!(path.contains(&placeholder), "{method} {path}: path parameter {name} not in the path")
                }
                Some("query") => assert!(!path.contains(&placeholder), "{method} {path}: {name} is in the path"),
                _ => {}
            }
        }
    }
}
