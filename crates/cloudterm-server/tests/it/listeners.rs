//! Each service can be served alone on its own listener, beside the main one.

use cloudterm_server::Service;
use cloudterm_test_support::TestServer;

use crate::support::*;

#[tokio::test]
async fn dedicated_listeners_serve_their_service_and_the_common_routes() {
    let server = TestServer::start_with(|config| {
        config.listeners.snapshot = Some("127.0.0.1:0".into());
        config.listeners.preview = Some("127.0.0.1:0".into());
    })
    .await;
    let token = server.token("alice");
    let snapshot = server.service_addr(Service::Snapshot).expect("snapshot listener");
    let preview = server.service_addr(Service::Preview).expect("preview listener");
    assert!(server.service_addr(Service::Sandbox).is_none());
    let mut ports = vec![server.addr().port(), snapshot.port(), preview.port()];
    ports.dedup();
    assert_eq!(ports.len(), 3, "three distinct listeners");
    for addr in [server.addr(), snapshot, preview] {
        let (status, _) = get(&format!("http://{addr}/health"), None).await;
        assert_eq!(status, 200, "{addr}");
        let (status, body) = get(&format!("http://{addr}/me"), Some(&token)).await;
        assert_eq!((status, body["principal"].as_str()), (200, Some("alice")), "{addr}");
        let (status, _) = get(&format!("http://{addr}/me"), None).await;
        assert_eq!(status, 401, "{addr}: auth holds on every listener");
        let (status, spec) = get(&format!("http://{addr}/openapi.json"), None).await;
        assert_eq!(status, 200, "{addr}");
        assert!(spec["paths"]["/me"].is_object(), "{addr}");
    }
}
