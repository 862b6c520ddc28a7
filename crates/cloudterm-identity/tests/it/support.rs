//! Test support: signing keys (RSA fixtures, fresh ES256 and Ed25519 keys), token builders
//! (including hand-forged HS* tokens), and a real JWKS/OIDC server on 127.0.0.1:0 that counts
//! its requests and can be switched off and on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use cloudterm_identity::{Verifier, VerifierConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use serde_json::{json, Value};

pub const RSA_A: &str = include_str!("../fixtures/rsa_a.pem");
pub const RSA_A_PUB: &str = include_str!("../fixtures/rsa_a_pub.pem");
pub const RSA_B: &str = include_str!("../fixtures/rsa_b.pem");
pub const RSA_FOREIGN: &str = include_str!("../fixtures/rsa_foreign.pem");

pub const AUD: &str = "https://api.cloudterm.test";

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// A private key that can sign tokens, with its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// The public JWK (without `alg`; add it with `jwk_with_alg`).
    pub jwk: Value,
    /// Raw public key bytes (Ed25519 only; empty otherwise).
    pub raw_public: Vec<u8>,
}

impl TestKey {
    pub fn rsa(pem: &str, kid: &str) -> TestKey {
        let der = pem_body(pem);
        let pair = ring::rsa::KeyPair::from_pkcs8(&der).expect("rsa pkcs8");
        let components: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
        TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa pem"),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig",
                        "n": b64(&components.n), "e": b64(&components.e)}),
            raw_public: Vec::new(),
        }
    }

    pub fn es256(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("ec key");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("ec pair");
        let point = pair.public_key().as_ref();
        TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                        "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
            raw_public: Vec::new(),
        }
    }

    pub fn ed25519(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ed pair");
        let public = pair.public_key().as_ref().to_vec();
        TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&public)}),
            raw_public: public,
        }
    }

    pub fn jwk_with_alg(&self, alg: &str) -> Value {
        let mut jwk = self.jwk.clone();
        jwk["alg"] = json!(alg);
        jwk
    }

    /// Signs `claims` with this key's algorithm and kid.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }

    /// Signs with a chosen algorithm and kid (which may lie about the key).
    pub fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect::<Vec<_>>().concat();
    STANDARD.decode(body).expect("pem base64")
}

/// Standard valid claims for `sub` from `iss`.
pub fn claims(iss: &str, sub: &str) -> Value {
    let now = now();
    json!({"iss": iss, "aud": AUD, "sub": sub, "iat": now, "nbf": now, "exp": now + 600})
}

/// A compact JWS with an arbitrary header, signed with HMAC-SHA2 over `secret`: the shape of a
/// key-confusion forgery.
pub fn forge_hmac(alg: &str, secret: &[u8], header: Value, claims: &Value) -> String {
    let mut header = header;
    header["alg"] = json!(alg);
    let message = format!(
        "{}.{}",
        b64(serde_json::to_vec(&header).expect("json")),
        b64(serde_json::to_vec(claims).expect("json"))
    );
    let algorithm = match alg {
        "HS256" => ring::hmac::HMAC_SHA256,
        "HS384" => ring::hmac::HMAC_SHA384,
        _ => ring::hmac::HMAC_SHA512,
    };
    let tag = ring::hmac::sign(&ring::hmac::Key::new(algorithm, secret), message.as_bytes());
    format!("{message}.{}", b64(tag.as_ref()))
}

/// A token with a raw header and payload and an arbitrary signature.
pub fn raw_token(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(serde_json::to_vec(header).expect("json")),
        b64(serde_json::to_vec(claims).expect("json"))
    )
}

/// The state of a test identity provider.
pub struct IdpState {
    pub jwks: Mutex<Value>,
    pub jwks_hits: AtomicUsize,
    pub discovery_hits: AtomicUsize,
    /// When false, every route answers 503.
    pub up: AtomicBool,
    /// The `issuer` the discovery document claims.
    pub issuer: Mutex<String>,
    /// When set, the discovery document has no `jwks_uri`.
    pub omit_jwks_uri: AtomicBool,
    /// When set, the JWKS route never answers in time.
    pub hang: AtomicBool,
    pub base: String,
}

/// A real HTTP identity provider on 127.0.0.1:0 serving discovery at
/// `{prefix}/.well-known/openid-configuration` and keys at `{prefix}/jwks.json`.
pub struct Idp {
    pub state: Arc<IdpState>,
    /// `http://127.0.0.1:PORT{prefix}`: the issuer URL.
    pub issuer: String,
    pub jwks_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Idp {
    pub async fn start(prefix: &str, keys: Vec<Value>) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let issuer = format!("http://{addr}{prefix}");
        let state = Arc::new(IdpState {
            jwks: Mutex::new(json!({ "keys": keys })),
            jwks_hits: AtomicUsize::new(0),
            discovery_hits: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            issuer: Mutex::new(issuer.clone()),
            omit_jwks_uri: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            base: issuer.clone(),
        });
        let app = Router::new()
            .route(&format!("{prefix}/.well-known/openid-configuration"), get(discovery))
            .route(&format!("{prefix}/jwks.json"), get(jwks))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Idp { state, jwks_url: format!("{issuer}/jwks.json"), issuer, task }
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.state.jwks.lock().expect("lock") = json!({ "keys": keys });
    }

    pub fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }

    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    /// A config that fetches keys straight from this server's JWKS URL.
    pub fn jwks_config(&self) -> VerifierConfig {
        VerifierConfig {
            issuer: Some(self.issuer.clone()),
            jwks_url: Some(self.jwks_url.clone()),
            audiences: vec![AUD.to_owned()],
            ..VerifierConfig::default()
        }
    }

    /// A verifier with `jwks_config`.
    pub async fn verifier(&self) -> Verifier {
        Verifier::remote(self.jwks_config()).await.expect("verifier")
    }
}

async fn discovery(State(state): State<Arc<IdpState>>) -> Response {
    state.discovery_hits.fetch_add(1, Ordering::SeqCst);
    if !state.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = state.issuer.lock().expect("lock").clone();
    let mut doc = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{}/authorize", state.base),
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
    });
    if !state.omit_jwks_uri.load(Ordering::SeqCst) {
        doc["jwks_uri"] = json!(format!("{}/jwks.json", state.base));
    }
    Json(doc).into_response()
}

async fn jwks(State(state): State<Arc<IdpState>>) -> Response {
    state.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if state.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    if !state.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let doc = state.jwks.lock().expect("lock").clone();
    Json(doc).into_response()
}

/// Waits until `check` holds, for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}
