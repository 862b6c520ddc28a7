//! Subdomain-style previews (`preview.domain`): a real server, real sandboxes running the
//! tests' Python app, and real HTTP clients that name `{port}-{sandbox}.preview.test` in the
//! `Host` header (reqwest with a resolve override to the server's loopback address, and raw
//! request lines for what a browser would never send).

use cloudterm_test_support::TestServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::previews::{free_port, json_of, register, sandbox_with_app};
use crate::sandboxes::Api;

const DOMAIN: &str = "preview.test";

/// A client that sends every name under the preview domain to the server (no redirects
/// followed, so tests see them).
fn client(server: &TestServer, hosts: &[&str]) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    for host in hosts {
        builder = builder.resolve(host, server.addr());
    }
    builder.build().expect("client")
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit_once(':').map_or(authority, |(host, _)| host).to_string()
}

/// Sends a raw request line and headers; returns the status line and the body.
async fn raw(server: &TestServer, request: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

/// A server that routes `{port}-{sandbox}.DOMAIN` to previews, with no warm pool.
async fn subdomain_server(runtime: &str) -> Option<TestServer> {
    TestServer::start_runtime(runtime, |config| {
        config.sandboxes.warm_pool = 0;
        config.preview.domain = Some(DOMAIN.into());
    })
    .await
}

async fn subdomains_serve_previews_at_the_root(runtime: &str) {
    let Some(server) = subdomain_server(runtime).await else { return };
    let alice = Api::new(&server, "alice");
    let port = free_port();
    let id = sandbox_with_app(&alice, port, "alpha").await;

    // The URL handed out names the subdomain, with the port the API was reached at.
    let (status, preview) = alice.call("POST", &format!("/sandboxes/{id}/preview"), Some(json!({"port": port}))).await;
    assert_eq!(status, 200, "{preview}");
    let host = format!("{port}-{id}.{DOMAIN}");
    let base = format!("http://{host}:{}", server.addr().port());
    assert_eq!(preview["url"], format!("{base}/"));
    let (_, listed) = alice.call("GET", "/preview/list", None).await;
    assert_eq!(listed["previews"][0]["url"], format!("{base}/"));
    let http = client(&server, &[&host, &format!("www.{DOMAIN}")]);

    // At the root: no prefix on the way in, none added on the way out.
    let response = http.get(format!("{base}/echo/a%20b?x=1")).bearer_auth(&alice.token).send().await.expect("echo");
    assert_eq!(response.status(), 200);
    let echo = json_of(response).await;
    assert_eq!((echo["name"].as_str(), echo["path"].as_str()), (Some("alpha"), Some("/echo/a%20b?x=1")));
    let headers = &echo["headers"];
    assert_eq!(headers["x-forwarded-host"], format!("{host}:{}", server.addr().port()));
    assert!(headers.get("x-forwarded-prefix").is_none(), "{headers}");
    assert_eq!(headers["host"], format!("localhost:{port}"));
    assert!(headers.get("authorization").is_none(), "the token reached the sandbox: {headers}");
    let response = http.get(format!("{base}/redirect")).bearer_auth(&alice.token).send().await.expect("redirect");
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/landed");
    let response = http.get(format!("{base}/cookie")).bearer_auth(&alice.token).send().await.expect("cookie");
    assert_eq!(response.headers()["set-cookie"], "sid=abc; Path=/; HttpOnly");
    let whoami = http.get(format!("{base}/whoami")).bearer_auth(&alice.token).send().await.expect("whoami");
    assert_eq!(whoami.text().await.expect("text"), "alpha");
    // `..` cannot climb out of the host's preview, nor can the path form hop to another one.
    let (status, body) = raw(
        &server,
        &format!(
            "GET /a/../../preview/sbx_other/1/x HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            alice.token
        ),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let echo: Value = serde_json::from_str(&body).expect("the app answered");
    assert_eq!((echo["name"].as_str(), echo["path"].as_str()), (Some("alpha"), Some("/preview/sbx_other/1/x")));

    // Private: no credentials is 401, a stranger's token 404, as on the path form.
    let bob = Api::new(&server, "bob");
    let response = http.get(format!("{base}/echo")).send().await.expect("anonymous");
    assert_eq!(response.status(), 401);
    assert_eq!(json_of(response).await["error"]["code"], "unauthorized");
    let response = http.get(format!("{base}/echo")).bearer_auth(&bob.token).send().await.expect("stranger");
    assert_eq!(response.status(), 404);

    // A signed link on the subdomain: the cookie is for this host only (no Domain), all paths.
    let (status, link) = alice.call("POST", "/preview/link", Some(json!({"sandbox_id": id, "port": port}))).await;
    assert_eq!(status, 200, "{link}");
    let link_url = link["url"].as_str().expect("url");
    assert!(link_url.starts_with(&format!("{base}/?cloudterm_preview_token=")), "{link_url}");
    let response = http.get(link_url.replace("/?", "/echo?keep=1&")).send().await.expect("link");
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/echo?keep=1");
    let set_cookie = response.headers()["set-cookie"].to_str().expect("cookie").to_string();
    assert!(set_cookie.contains("; Path=/;") && !set_cookie.to_ascii_lowercase().contains("domain"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().expect("pair").to_string();
    let response =
        http.get(format!("{base}/echo")).header("cookie", format!("{cookie}; app=2")).send().await.expect("cookie");
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["headers"]["cookie"], "app=2", "the link cookie reached the app");
    // A cookie another preview's app set for the whole domain cannot shadow the real one.
    let response = http
        .get(format!("{base}/echo"))
        .header("cookie", format!("cloudterm_preview=v1.planted.1.1.1.AAAA; {cookie}"))
        .send()
        .await
        .expect("two cookies");
    assert_eq!(response.status(), 200);

    // A name under the preview domain that is no preview is refused, not served the API.
    let response =
        http.get(format!("http://www.{DOMAIN}:{}/me", server.addr().port())).bearer_auth(&alice.token).send().await;
    let response = response.expect("www");
    assert_eq!(response.status(), 400);
    assert_eq!(json_of(response).await["error"]["code"], "bad_request");
    // The path form keeps working beside it.
    let path_form = format!("/preview/{id}/{port}/whoami");
    assert_eq!(alice.text(&path_form).await, "alpha");
}

async fn host_spoofing_cannot_reach_another_private_preview(runtime: &str) {
    let Some(server) = subdomain_server(runtime).await else { return };
    let alice = Api::new(&server, "alice");
    let mallory = Api::new(&server, "mallory");
    let (alice_port, mallory_port) = (free_port(), free_port());
    let alices = sandbox_with_app(&alice, alice_port, "alice-app").await;
    let mallorys = sandbox_with_app(&mallory, mallory_port, "mallory-app").await;
    let victim = host_of(
        register(&alice, json!({"sandbox_id": alices, "port": alice_port})).await["url"].as_str().expect("url"),
    );
    let own = register(&mallory, json!({"sandbox_id": mallorys, "port": mallory_port})).await;
    let own_url = own["url"].as_str().expect("url").to_string();
    let own_host = host_of(&own_url);
    let http = client(&server, &[&victim, &own_host]);
    let at = |host: &str, path: &str| format!("http://{host}:{}{path}", server.addr().port());

    // Mallory's own token and a valid link cookie for her own preview.
    let (_, link) =
        mallory.call("POST", "/preview/link", Some(json!({"sandbox_id": mallorys, "port": mallory_port}))).await;
    let response = http.get(link["url"].as_str().expect("url")).send().await.expect("own link");
    assert_eq!(response.status(), 303);
    let cookie =
        response.headers()["set-cookie"].to_str().expect("cookie").split(';').next().expect("pair").to_string();
    let response = http.get(at(&own_host, "/whoami")).header("cookie", &cookie).send().await.expect("own");
    assert_eq!(response.text().await.expect("text"), "mallory-app");

    // Naming Alice's preview in Host: her token, her cookie, nothing gets through.
    let response = http.get(at(&victim, "/whoami")).bearer_auth(&mallory.token).send().await.expect("token");
    assert_eq!(response.status(), 404);
    let response = http.get(at(&victim, "/whoami")).header("cookie", &cookie).send().await.expect("cookie");
    assert_eq!(response.status(), 403, "a link for another preview");
    let response = http.get(at(&victim, "/whoami")).send().await.expect("nothing");
    assert_eq!(response.status(), 401);
    // X-Forwarded-Host is not routing: her own host still reaches her own app.
    let response = http
        .get(at(&own_host, "/whoami"))
        .header("cookie", &cookie)
        .header("x-forwarded-host", &victim)
        .send()
        .await
        .expect("forwarded host");
    assert_eq!(response.text().await.expect("text"), "mallory-app");
    // An absolute request line naming Alice's host under Mallory's Host header: the request
    // line's authority decides, and the access check refuses.
    let (status, body) = raw(
        &server,
        &format!(
            "GET http://{victim}/whoami HTTP/1.1\r\nHost: {own_host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}: {body}");
    assert!(!body.contains("alice-app"), "{body}");
    // The path form of Alice's preview on Mallory's host stays inside Mallory's preview.
    let hop = format!("/preview/{alices}/{alice_port}/echo");
    let response = http.get(at(&own_host, &hop)).header("cookie", &cookie).send().await.expect("hop");
    let echo = json_of(response).await;
    assert_eq!((echo["name"].as_str(), echo["path"].as_str()), (Some("mallory-app"), Some(&*hop)), "{echo}");
    // And Alice, with her own token, is served on her own host.
    let response = http.get(at(&victim, "/whoami")).bearer_auth(&alice.token).send().await.expect("alice");
    assert_eq!(response.text().await.expect("text"), "alice-app");
}

on_every_runtime!(subdomains_serve_previews_at_the_root, host_spoofing_cannot_reach_another_private_preview);
