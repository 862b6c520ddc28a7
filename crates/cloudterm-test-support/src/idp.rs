//! `JwksServer`: a real identity provider on loopback for tests, with OIDC discovery, a
//! JWKS of RS256 keys, and a counter of how often the JWKS was fetched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A test RSA key: its private PEM and its public JWK.
#[derive(Clone, Copy)]
pub struct IdpKey {
    /// The key id.
    pub kid: &'static str,
    pem: &'static str,
    jwk: &'static str,
}

impl IdpKey {
    /// The key the IdP publishes.
    pub const IDP: IdpKey = IdpKey {
        kid: "idp_rsa",
        pem: include_str!("../fixtures/idp_rsa.pem"),
        jwk: include_str!("../fixtures/idp_rsa.jwk.json"),
    };
    /// A key the IdP does not publish (a forger's key).
    pub const FOREIGN: IdpKey = IdpKey {
        kid: "foreign_rsa",
        pem: include_str!("../fixtures/foreign_rsa.pem"),
        jwk: include_str!("../fixtures/foreign_rsa.jwk.json"),
    };

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        serde_json::from_str(self.jwk).expect("fixture jwk is json")
    }

    /// The public key as PEM (for key-confusion attacks).
    pub fn public_pem(&self) -> &'static str {
        match self.kid {
            "idp_rsa" => include_str!("../fixtures/idp_rsa_pub.pem"),
            _ => include_str!("../fixtures/foreign_rsa_pub.pem"),
        }
    }

    /// Signs `claims` with RS256 under `kid` (which may differ from the key's own, to forge).
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_string());
        let key = EncodingKey::from_rsa_pem(self.pem.as_bytes()).expect("fixture pem");
        encode(&header, claims, &key).expect("sign")
    }
}

struct IdpState {
    issuer: String,
    keys: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
}

/// An OIDC issuer at `http://127.0.0.1:PORT` serving `/.well-known/openid-configuration` and
/// `/jwks.json`.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<IdpState>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Starts the IdP publishing `keys`.
    pub async fn start(keys: &[IdpKey]) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind idp");
        let addr = listener.local_addr().expect("idp addr");
        let state = Arc::new(IdpState {
            issuer: format!("http://{addr}"),
            keys: Mutex::new(keys.iter().map(IdpKey::jwk).collect()),
            jwks_fetches: AtomicUsize::new(0),
        });
        let discovery_state = state.clone();
        let jwks_state = state.clone();
        let app =
            Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    get(move || {
                        let state = discovery_state.clone();
                        async move {
                            Json(json!({"issuer": state.issuer, "jwks_uri": format!("{}/jwks.json", state.issuer)}))
                        }
                    }),
                )
                .route(
                    "/jwks.json",
                    get(move || {
                        let state = jwks_state.clone();
                        async move {
                            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                            let keys = state.keys.lock().expect("keys lock").clone();
                            Json(json!({ "keys": keys }))
                        }
                    }),
                );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer { addr, state, task }
    }

    /// The issuer URL (`iss` of the tokens it would issue).
    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Replaces the published keys (key rotation).
    pub fn publish(&self, keys: &[IdpKey]) {
        *self.state.keys.lock().expect("keys lock") = keys.iter().map(IdpKey::jwk).collect();
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
