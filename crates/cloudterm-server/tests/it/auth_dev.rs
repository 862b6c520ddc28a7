//! The dev issuer end to end: a minted token works, and every forgery is refused with 401.

use cloudterm_test_support::TestServer;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_dev_token_names_the_principal() {
    let server = TestServer::start().await;
    let token = server.token("alice");
    let (status, body) = get(&server.url("/me"), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["principal"], "alice");
    let home = body["home_workspace_id"].as_str().expect("home workspace");
    assert!(home.starts_with("ws_"), "{home}");
    // The home workspace is made once: a second call sees the same one.
    let (_, again) = get(&server.url("/me"), Some(&token)).await;
    assert_eq!(again["home_workspace_id"], home);
    // Another principal gets another home.
    let (_, bob) = get(&server.url("/me"), Some(&server.token("bob"))).await;
    assert_eq!(bob["principal"], "bob");
    assert_ne!(bob["home_workspace_id"], home);
}

#[tokio::test]
async fn every_forgery_is_refused() {
    let server = TestServer::start().await;
    let jwks = server.state().dev_issuer.as_ref().expect("dev issuer").jwks();
    let kid = jwks["keys"][0]["kid"].as_str().expect("kid").to_string();
    let x = jwks["keys"][0]["x"].as_str().expect("x").to_string();
    let public_key = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &x).expect("x decodes");
    let good = server.token("alice");
    let claims = dev_claims("alice");

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("empty bearer", Some(String::new())),
        ("garbage", Some("not-a-jwt".into())),
        ("three garbage parts", Some("a.b.c".into())),
        ("alg none", Some(raw_jwt(&json!({"alg": "none", "typ": "JWT"}), &claims, b""))),
        ("alg none with kid", Some(raw_jwt(&json!({"alg": "none", "kid": kid}), &claims, b""))),
        ("HS256 keyed with the raw public key", Some(hs256_jwt(&kid, &claims, &public_key))),
        ("HS256 keyed with the JWK x text", Some(hs256_jwt(&kid, &claims, x.as_bytes()))),
        ("HS256 keyed with the JWKS document", Some(hs256_jwt(&kid, &claims, jwks.to_string().as_bytes()))),
        ("a foreign key claiming the dev kid", Some(foreign_ed25519_jwt(&kid, &claims))),
        ("a foreign key with its own kid", Some(foreign_ed25519_jwt("attacker", &claims))),
        ("tampered payload", Some(tamper(&good, &dev_claims("root")))),
        ("signature stripped", Some(good.rsplit_once('.').map(|(head, _)| format!("{head}.")).expect("three parts"))),
        ("expired", Some(server_mint(&server, json!({"exp": now() - 3600, "iat": now() - 7200, "nbf": now() - 7200})))),
        ("not yet valid", Some(server_mint(&server, json!({"nbf": now() + 3600})))),
        ("wrong audience", Some(server_mint(&server, json!({"aud": "someone-else"})))),
        ("wrong issuer", Some(server_mint(&server, json!({"iss": "https://evil.example.com"})))),
        ("no subject", Some(server_mint(&server, json!({"sub": null})))),
    ];
    for (case, token) in cases {
        let (status, body) = get(&server.url("/me"), token.as_deref()).await;
        assert_unauthorized(case, status, &body);
    }
    // The real token still works after all that.
    let (status, _) = get(&server.url("/me"), Some(&good)).await;
    assert_eq!(status, 200);
}

/// Signs dev claims with `changes` applied using the server's own dev key, so only the
/// changed claim can be the reason for a refusal.
fn server_mint(server: &TestServer, changes: serde_json::Value) -> String {
    let key_path = server.data_dir().join("identity/dev-ed25519.pk8");
    let pkcs8 = std::fs::read(&key_path).expect("dev key file");
    let jwks = server.state().dev_issuer.as_ref().expect("dev issuer").jwks();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = jwks["keys"][0]["kid"].as_str().map(str::to_string);
    let mut claims = dev_claims("alice");
    for (name, value) in changes.as_object().expect("object") {
        if value.is_null() {
            claims.as_object_mut().expect("object").remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ed_der(&pkcs8)).expect("sign")
}

#[tokio::test]
async fn a_token_signed_with_the_server_key_but_clean_claims_passes() {
    // Guards the forgery test above: server_mint itself makes acceptable tokens.
    let server = TestServer::start().await;
    let (status, body) = get(&server.url("/me"), Some(&server_mint(&server, json!({})))).await;
    assert_eq!(status, 200, "{body}");
    // An expiry within the 30 s leeway is still accepted.
    let (status, body) = get(&server.url("/me"), Some(&server_mint(&server, json!({"exp": now() - 5})))).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn hostile_subjects_never_become_paths() {
    let server = TestServer::start().await;
    let before = list_tree(server.data_dir());
    for sub in ["../../x", "/etc", "..", "a/../../b", "CON"] {
        let token = server_mint(&server, json!({"sub": sub}));
        let (status, body) = get(&server.url("/me"), Some(&token)).await;
        assert_eq!(status, 200, "{sub}: {body}");
        assert_eq!(body["principal"], sub, "the principal is reported as the token names it");
    }
    for (case, sub) in
        [("NUL byte", "al\0ice".to_string()), ("5,000 characters", "a".repeat(5000)), ("empty", String::new())]
    {
        let token = server_mint(&server, json!({"sub": sub}));
        let (status, body) = get(&server.url("/me"), Some(&token)).await;
        assert_unauthorized(case, status, &body);
    }
    // Nothing appeared outside the data dir's own layout, and no path named after a subject.
    let after = list_tree(server.data_dir());
    for path in after.difference(&before) {
        let text = path.to_string_lossy();
        assert!(!text.contains("etc") && !text.contains(".."), "unexpected path {text}");
    }
    assert!(!server.data_dir().parent().expect("parent").join("x").exists());
}

fn list_tree(root: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path.strip_prefix(root).expect("under root").to_path_buf());
        }
    }
    out
}

#[tokio::test]
async fn the_dev_jwks_is_public_and_verifies_minted_tokens() {
    let server = TestServer::start().await;
    let (status, jwks) = get(&server.url("/.well-known/jwks.json"), None).await;
    assert_eq!(status, 200);
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert!(key.get("d").is_none(), "the private key must never be published");
    // An outside verifier can check a minted token with only the published key.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.clone()).expect("jwk");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["cloudterm"]);
    validation.set_issuer(&["cloudterm-dev"]);
    let decoded = jsonwebtoken::decode::<serde_json::Value>(
        &server.token("carol"),
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("key"),
        &validation,
    )
    .expect("verifies");
    assert_eq!(decoded.claims["sub"], "carol");
}

#[tokio::test]
async fn identity_survives_a_restart() {
    let server = TestServer::start().await;
    let token = server.token("alice");
    let (_, first) = get(&server.url("/me"), Some(&token)).await;
    let data_dir = server.stop().await;
    let server = TestServer::restart_on(data_dir, |_| {}).await;
    // The same key signs and verifies, and the same home workspace comes back.
    let (status, second) = get(&server.url("/me"), Some(&token)).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(first["home_workspace_id"], second["home_workspace_id"]);
}
