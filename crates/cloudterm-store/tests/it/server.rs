//! The real cloudterm server on PostgreSQL: it starts with `store.url = postgres://…`, keeps its
//! principals there (not in a SQLite file), reports the backend in `/health/ready`, and a second
//! server on the same database sees the same principals (the scale-out set-up).

use cloudterm_test_support::{PostgresServer, TestServer};
use serde_json::Value;

/// `GET path` with an optional bearer token, as JSON whatever the status.
async fn get_json(server: &TestServer, path: &str, token: Option<&str>) -> Value {
    let mut request = reqwest::Client::new().get(server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request").json().await.expect("json body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_runs_on_postgres_and_shares_it() {
    let Some(postgres) = PostgresServer::shared().await else { return };
    let url = postgres.create_database().await;
    let start = || {
        let url = url.clone();
        TestServer::start_with(move |config| {
            config.store.url = Some(url);
            // No warm sandboxes: this test is about the store, and needs no agent binary.
            config.sandboxes.warm_pool = 0;
        })
    };
    let first = start().await;
    assert_eq!(first.state().store.backend_name(), "postgres");

    let me = get_json(&first, "/me", Some(&first.token("alice"))).await;
    let home = me["home_workspace_id"].as_str().unwrap_or_else(|| panic!("no home workspace: {me}")).to_owned();
    let store = cloudterm_store::open(&url).await.expect("open the server's database");
    assert_eq!(store.get_principal("alice").await.expect("alice is in postgres").home_workspace_id, home);
    assert!(!first.data_dir().join("cloudterm.db").exists(), "no sqlite file on the side");

    let ready = get_json(&first, "/health/ready", None).await;
    let checks = ready["checks"].as_array().unwrap_or_else(|| panic!("no checks: {ready}"));
    let check = checks.iter().find(|check| check["name"] == "store").unwrap_or_else(|| panic!("{ready}"));
    assert_eq!(check["backend"], "postgres", "{check}");
    assert_eq!(check["ok"], true, "{check}");

    // A second server on the same database (its own data dir and dev key) sees the same principal.
    let second = start().await;
    let again = get_json(&second, "/me", Some(&second.token("alice"))).await;
    assert_eq!(again["home_workspace_id"], home.as_str(), "{again}");
}
