//! Helpers shared by the integration tests: token forging, JSON requests, and running a test
//! once per sandbox runtime.

/// Runs each named test once per runtime: the process runtime everywhere, the linux runtime
/// where it can run (with CI=true it must), the firecracker runtime where a guest kernel and
/// root image are given (`TestServer::start_runtime`; docs/firecracker.md). Each test is an
/// `async fn(runtime: &str)`.
macro_rules! on_every_runtime {
    ($($name:ident),* $(,)?) => {
        mod process {
            $( #[tokio::test] async fn $name() { super::$name("process").await } )*
        }
        mod linux {
            $( #[tokio::test] async fn $name() { super::$name("linux").await } )*
        }
        mod firecracker {
            $( #[tokio::test] async fn $name() { super::$name("firecracker").await } )*
        }
    };
}

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims the dev issuer would accept for `sub`.
pub fn dev_claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": "cloudterm-dev", "aud": "cloudterm", "iat": now(), "nbf": now(), "exp": now() + 3600})
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT from raw parts, signed (or not) however the attack needs.
pub fn raw_jwt(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()), b64(signature))
}

/// HMAC-SHA256 over `header.claims` with `secret`: the key-confusion forgery.
pub fn hs256_jwt(kid: &str, claims: &Value, secret: &[u8]) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(tag.as_ref()))
}

/// An EdDSA token signed by a freshly made key nobody trusts.
pub fn foreign_ed25519_jwt(kid: &str, claims: &Value) -> String {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let key = jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// Swaps a token's payload for `claims`, keeping its header and signature.
pub fn tamper(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64(claims.to_string().as_bytes()), parts[2])
}

/// GET `url` with an optional bearer token; returns status and JSON body (or Null).
pub async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Asserts a 401 with the JSON envelope.
pub fn assert_unauthorized(case: &str, status: u16, body: &Value) {
    assert_eq!(status, 401, "{case}: expected 401, got {status} {body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{case}: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}: {body}");
}
