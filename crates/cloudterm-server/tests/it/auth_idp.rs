//! A real identity provider (RS256 JWKS + OIDC discovery on loopback) in front of the server.

use cloudterm_test_support::{IdpKey, JwksServer, TestServer};
use serde_json::{json, Value};

use crate::support::*;

const AUDIENCE: &str = "https://api.cloudterm.test";

fn idp_claims(idp: &JwksServer, sub: &str) -> Value {
    json!({"sub": sub, "iss": idp.issuer(), "aud": AUDIENCE, "iat": now(), "nbf": now(), "exp": now() + 600, "email": format!("{sub}@example.com")})
}

async fn server_behind(idp: &JwksServer, adjust: impl FnOnce(&mut cloudterm_server::Config)) -> TestServer {
    let issuer = idp.issuer();
    TestServer::start_with(move |config| {
        config.auth.issuer = Some(issuer);
        config.auth.audience = vec![AUDIENCE.to_string()];
        adjust(config);
    })
    .await
}

#[tokio::test]
async fn rs256_tokens_from_the_idp_are_accepted_via_discovery() {
    let idp = JwksServer::start(&[IdpKey::IDP]).await;
    let server = server_behind(&idp, |_| {}).await;
    assert!(server.state().dev_issuer.is_none(), "an IdP turns the dev issuer off");
    let token = IdpKey::IDP.sign(IdpKey::IDP.kid, &idp_claims(&idp, "auth0|alice"));
    let (status, body) = get(&server.url("/me"), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["principal"], "auth0|alice");
    let (status, _) = get(&server.url("/.well-known/jwks.json"), None).await;
    assert_eq!(status, 404, "the dev JWKS is gone with an IdP");
}

#[tokio::test]
async fn forgeries_against_the_idp_are_refused() {
    let idp = JwksServer::start(&[IdpKey::IDP]).await;
    let server = server_behind(&idp, |config| config.auth.jwks_refresh_min_interval_seconds = 3600).await;
    let good = idp_claims(&idp, "alice");
    let with = |changes: Value| {
        let mut claims = good.clone();
        for (name, value) in changes.as_object().expect("object") {
            claims[name] = value.clone();
        }
        IdpKey::IDP.sign(IdpKey::IDP.kid, &claims)
    };
    let cases = vec![
        ("foreign key claiming the IdP's kid", IdpKey::FOREIGN.sign(IdpKey::IDP.kid, &good)),
        ("foreign key with an unknown kid", IdpKey::FOREIGN.sign("rotated-maybe", &good)),
        (
            "HS256 keyed with the IdP's public PEM",
            hs256_jwt(IdpKey::IDP.kid, &good, IdpKey::IDP.public_pem().as_bytes()),
        ),
        ("alg none", raw_jwt(&json!({"alg": "none", "kid": IdpKey::IDP.kid}), &good, b"")),
        ("tampered payload", tamper(&IdpKey::IDP.sign(IdpKey::IDP.kid, &good), &idp_claims(&idp, "admin"))),
        ("wrong audience", with(json!({"aud": "https://other.example.com"}))),
        ("wrong issuer", with(json!({"iss": "https://evil.example.com"}))),
        ("expired beyond the leeway", with(json!({"exp": now() - 600}))),
        ("not yet valid beyond the leeway", with(json!({"nbf": now() + 600}))),
    ];
    for (case, token) in cases {
        let (status, body) = get(&server.url("/me"), Some(&token)).await;
        assert_unauthorized(case, status, &body);
    }
    // A dev token from this server's data dir is not an IdP token.
    let dev = cloudterm_identity::DevIssuer::load_or_create(server.data_dir()).expect("dev key");
    let (status, body) =
        get(&server.url("/me"), Some(&dev.mint("alice", std::time::Duration::from_secs(60)).expect("mint"))).await;
    assert_unauthorized("dev token with an IdP configured", status, &body);
    // The legitimate token passes.
    let (status, body) = get(&server.url("/me"), Some(&with(json!({})))).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_principal_claim_is_configurable() {
    let idp = JwksServer::start(&[IdpKey::IDP]).await;
    let server = server_behind(&idp, |config| config.auth.principal_claim = "email".into()).await;
    let token = IdpKey::IDP.sign(IdpKey::IDP.kid, &idp_claims(&idp, "alice"));
    let (status, body) = get(&server.url("/me"), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["principal"], "alice@example.com");
}

#[tokio::test]
async fn key_rotation_is_picked_up_and_unknown_kids_do_not_hammer_the_idp() {
    let idp = JwksServer::start(&[IdpKey::IDP]).await;
    let jwks_url = idp.jwks_url();
    let issuer = idp.issuer();
    let server = TestServer::start_with(move |config| {
        config.auth.jwks_url = Some(jwks_url);
        config.auth.issuer = Some(issuer);
        config.auth.audience = vec![AUDIENCE.to_string()];
        config.auth.jwks_refresh_min_interval_seconds = 2;
    })
    .await;
    let first = IdpKey::IDP.sign(IdpKey::IDP.kid, &idp_claims(&idp, "alice"));
    assert_eq!(get(&server.url("/me"), Some(&first)).await.0, 200);

    // The IdP rotates to a new key; once the refresh interval since the last fetch has passed,
    // the first token with the new kid triggers a refresh.
    idp.publish(&[IdpKey::IDP, IdpKey::FOREIGN]);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let rotated = IdpKey::FOREIGN.sign(IdpKey::FOREIGN.kid, &idp_claims(&idp, "alice"));
    let (status, body) = get(&server.url("/me"), Some(&rotated)).await;
    assert_eq!(status, 200, "rotated key not picked up: {body}");
    let fetches_after_rotation = idp.jwks_fetches();

    // A flood of tokens with unknown kids right after causes no further fetches within the interval.
    for attempt in 0..20 {
        let forged = IdpKey::FOREIGN.sign(&format!("unknown-{attempt}"), &idp_claims(&idp, "alice"));
        let (status, body) = get(&server.url("/me"), Some(&forged)).await;
        assert_unauthorized("unknown kid", status, &body);
    }
    assert_eq!(idp.jwks_fetches(), fetches_after_rotation, "unknown kids must not each refetch the JWKS");
}

#[tokio::test]
async fn an_unreachable_idp_makes_the_server_not_ready_rather_than_open() {
    // Nothing listens on this port: the IdP is down.
    let idle = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}/jwks.json", idle.local_addr().expect("addr"));
    drop(idle);
    let server = TestServer::start_with(move |config| {
        config.auth.jwks_url = Some(dead);
        config.auth.audience = vec![AUDIENCE.to_string()];
    })
    .await;
    let (status, body) = get(&server.url("/health/ready"), None).await;
    assert_eq!(status, 503, "{body}");
    let identity = body["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "identity")
        .cloned()
        .expect("identity check");
    assert_eq!(identity["ok"], false);
    // Liveness still answers, and a token cannot get in.
    assert_eq!(get(&server.url("/health"), None).await.0, 200);
    let token = IdpKey::IDP.sign(IdpKey::IDP.kid, &json!({"sub": "alice", "aud": AUDIENCE, "exp": now() + 60}));
    let (status, _) = get(&server.url("/me"), Some(&token)).await;
    assert!(status == 503 || status == 401, "got {status}");
}
