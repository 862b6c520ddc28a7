//! The browser console: its files come from the binary, `POST /dev/token` mints only for this
//! machine, and the whole console works in a real headless Chromium against a real server
//! (`web/tests/console.mjs`, driven by playwright-core).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cloudterm_test_support::{skip_unless, IdpKey, JwksServer, TestServer};
use serde_json::{json, Value};

use crate::support::*;

/// The build script's check of `web/node_modules` against the lock.
#[path = "../../build_lock.rs"]
mod build_lock;

/// The whole browser script, including starting Chromium on a loaded machine.
const BROWSER_TEST_LIMIT: Duration = Duration::from_secs(300);

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

/// True (after saying why, or failing under CI) when this build has no xterm.js.
fn console_not_built() -> bool {
    let missing = cloudterm_server::console::vendor_missing();
    skip_unless(missing.is_none(), &format!("this build has no console: {}", missing.unwrap_or_default()))
}

async fn post_dev_token(server: &TestServer, body: Value, host: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(server.url("/dev/token")).json(&body);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_console_and_its_files_come_from_the_binary() {
    let server = TestServer::start().await;
    if console_not_built() {
        // The page that says how to build it, rather than a panic or a bare 404.
        let response = reqwest::get(server.url("/")).await.expect("page");
        assert_eq!(response.status(), 503);
        assert!(response.text().await.expect("text").contains("npm ci"));
        return;
    }
    let response = reqwest::get(server.url("/")).await.expect("page");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    let policy = response.headers()["content-security-policy"].to_str().expect("ascii").to_string();
    assert!(policy.contains("default-src 'self'") && policy.contains("script-src 'self'"), "{policy}");
    let page = response.text().await.expect("html");
    assert!(page.contains("/console/console.js") && page.contains("/console/xterm.css"), "{page}");
    for (name, content_type, at_least) in [
        ("console.js", "text/javascript", 1_000),
        ("console.css", "text/css", 100),
        ("xterm.mjs", "text/javascript", 100_000),
        ("xterm.css", "text/css", 1_000),
        ("addon-fit.mjs", "text/javascript", 500),
    ] {
        let response = reqwest::get(server.url(&format!("/console/{name}"))).await.expect("file");
        assert_eq!(response.status(), 200, "{name}");
        let served = response.headers()["content-type"].to_str().expect("ascii").to_string();
        assert!(served.starts_with(content_type), "{name}: {served}");
        assert!(response.bytes().await.expect("body").len() >= at_least, "{name} is too small");
    }
    let (status, body) = get(&server.url("/console/..%2FCargo.toml"), None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&server.url("/console/nope.js"), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    // The API docs are still where they were.
    assert_eq!(reqwest::get(server.url("/docs/")).await.expect("docs").status(), 200);
}

#[tokio::test]
async fn the_console_lives_with_the_sandbox_api() {
    // With the Sandbox API on a listener of its own, the console moves there with it.
    let server = TestServer::start_with(|config| config.listeners.sandbox = Some("127.0.0.1:0".into())).await;
    let sandbox = server.service_addr(cloudterm_server::Service::Sandbox).expect("sandbox listener");
    let (status, _) = get(&server.url("/"), None).await;
    assert_eq!(status, 404, "the main listener has no Sandbox API, so no console");
    let response = reqwest::get(format!("http://{sandbox}/console/console.js")).await.expect("file");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn dev_tokens_are_minted_for_this_machine_only() {
    let server = TestServer::start().await;
    let (status, body) = post_dev_token(&server, json!({"principal": "carol"}), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["principal"], "carol");
    let expires = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().expect("expires_at")).expect("time");
    let hours = (expires.timestamp() - now()) / 3600;
    assert!((11..=12).contains(&hours), "default lifetime is 12 hours, got {hours}");
    let token = body["token"].as_str().expect("token");
    let (status, me) = get(&server.url("/me"), Some(token)).await;
    assert_eq!((status, me["principal"].as_str()), (200, Some("carol")), "{me}");

    let port = server.addr().port();
    let (status, body) =
        post_dev_token(&server, json!({"principal": "carol"}), Some(&format!("localhost:{port}"))).await;
    assert_eq!(status, 200, "localhost is this machine too: {body}");
    // A page whose name was rebound to 127.0.0.1 reaches us with its own name in Host.
    let (status, body) =
        post_dev_token(&server, json!({"principal": "carol"}), Some(&format!("attacker.example:{port}"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    for bad in [json!({"principal": ""}), json!({"principal": "x", "ttl_seconds": 5}), json!({"principal": "a\u{7}b"})]
    {
        let (status, body) = post_dev_token(&server, bad.clone(), None).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (status, _) = post_dev_token(&server, json!({"principal": "carol", "admin": true}), None).await;
    assert_eq!(status, 422, "unknown fields are refused");

    // With a real identity provider the route is gone.
    let idp = JwksServer::start(&[IdpKey::IDP]).await;
    let issuer = idp.issuer();
    let server = TestServer::start_with(move |config| {
        config.auth.issuer = Some(issuer);
        config.auth.audience = vec!["https://api.cloudterm.test".into()];
    })
    .await;
    let (status, body) = post_dev_token(&server, json!({"principal": "carol"}), None).await;
    assert_eq!(status, 404, "{body}");
}

/// `node`, Chromium and playwright-core, or why not.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let chromium = PathBuf::from(std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()));
    if !chromium.is_file() {
        return Err(format!("no Chromium at {} (apt-get install chromium)", chromium.display()));
    }
    let node = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("node"))
        .find(|path| path.is_file())
        .ok_or("no node on PATH (apt-get install nodejs npm)")?;
    if !web_dir().join("node_modules/playwright-core/package.json").is_file() {
        return Err("web/node_modules has no playwright-core (run npm ci in web/)".into());
    }
    Ok((node, chromium))
}

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    let tools = browser_tools();
    if skip_unless(tools.is_ok(), tools.as_ref().err().map_or("", String::as_str)) || console_not_built() {
        return;
    }
    let Ok((node, chromium)) = tools else { return };
    let server = TestServer::start().await;
    let mut command = tokio::process::Command::new(node);
    command
        .arg("tests/console.mjs")
        .current_dir(web_dir())
        .env("CLOUDTERM_URL", server.url("/"))
        .env("CLOUDTERM_TOKEN", server.token("alice"))
        .env("CHROMIUM", chromium)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(BROWSER_TEST_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("the browser test took longer than {BROWSER_TEST_LIMIT:?}"))
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser test failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("console test passed"), "{stdout}\n{stderr}");
    // What the browser did is real: alice's sandbox exists and its shell ran the command.
    let (_, list) = get(&server.url("/sandboxes"), Some(&server.token("alice"))).await;
    assert_eq!(list["sandboxes"].as_array().map(Vec::len), Some(1), "{list}");
}

/// `build.rs` re-runs `npm ci` when `web/node_modules` is not what the lock pins; this is the
/// check that decides it.
#[test]
fn the_build_notices_a_node_modules_that_is_not_the_lock() {
    let lock = r#"{"packages": {"": {}, "node_modules/@xterm/xterm": {"version": "6.0.0"}, "node_modules/plain": {"version": "1.2.3"}}}"#;
    let installed = |xterm: Option<&'static str>| {
        move |package: &str| match package {
            "@xterm/xterm" => xterm.map(|version| format!(r#"{{"name": "@xterm/xterm", "version": "{version}"}}"#)),
            "plain" => Some(r#"{"version": "1.2.3"}"#.to_string()),
            _ => None,
        }
    };
    let packages = ["@xterm/xterm", "plain"];
    assert_eq!(build_lock::stale_packages(lock, &packages, installed(Some("6.0.0"))), Ok(vec![]));
    let older = build_lock::stale_packages(lock, &packages, installed(Some("5.5.0"))).expect("a readable lock");
    assert_eq!(older, vec!["@xterm/xterm is 5.5.0, the lock pins 6.0.0".to_string()]);
    let missing = build_lock::stale_packages(lock, &packages, installed(None)).expect("a readable lock");
    assert_eq!(missing, vec!["@xterm/xterm is not installed".to_string()]);
    assert!(build_lock::stale_packages(lock, &["@xterm/addon-fit"], installed(None)).is_err(), "not pinned");
    assert!(build_lock::stale_packages("{", &packages, installed(None)).is_err(), "not JSON");
    assert_eq!(build_lock::package_of("@xterm/xterm/lib/xterm.mjs"), "@xterm/xterm");
    assert_eq!(build_lock::package_of("plain/index.js"), "plain");
    // This checkout: whatever built this test embedded what the lock pins.
    if cloudterm_server::console::vendor_missing().is_none() {
        let web = web_dir();
        let lock = std::fs::read_to_string(web.join("package-lock.json")).expect("web/package-lock.json");
        let modules = web.join("node_modules");
        let read = |package: &str| std::fs::read_to_string(modules.join(package).join("package.json")).ok();
        let stale = build_lock::stale_packages(&lock, &["@xterm/xterm", "@xterm/addon-fit"], read);
        assert_eq!(stale, Ok(vec![]), "the embedded console is not the locked one");
    }
}
