//! JSON Web Key Sets: parsing a JWKS document into verification keys (skipping entries we
//! cannot use), and the remote key cache: OIDC discovery, fetching, rate-limited refresh on an
//! unknown `kid`, refresh by age, and one shared in-flight refresh.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

use crate::error::IdentityError;

/// Largest discovery or JWKS document we read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// While no key set was ever fetched, a failed fetch may be retried this often at most (or
/// `jwks_refresh_min_interval`, if shorter), so a verifier recovers quickly from an identity
/// provider that was down at start-up.
const COLD_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// The key type and curve of a verification key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    fn accepts(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::EcP256 => alg == Algorithm::ES256,
            KeyKind::EcP384 => alg == Algorithm::ES384,
            KeyKind::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

/// One public key we can verify signatures with.
pub(crate) struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl VerifyKey {
    /// Whether a token signed with `alg` may be checked with this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.accepts(alg) && self.alg.is_none_or(|own| own == alg)
    }
}

/// The usable keys of one JWKS document.
#[derive(Default)]
pub(crate) struct KeySet {
    pub keys: Vec<VerifyKey>,
}

/// What selecting a key for a token found.
pub(crate) enum Selected<'a> {
    Key(&'a VerifyKey),
    /// The token names a `kid` we do not have.
    UnknownKid,
    /// The token has no `kid` and the set does not have exactly one key.
    Ambiguous,
}

impl KeySet {
    /// Parses a JWKS document. Entries that are not usable signature keys are skipped with a
    /// warning; a document that is not a JWKS at all is an error.
    pub fn from_jwks(doc: &Value) -> Result<KeySet, String> {
        let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
            return Err("document has no \"keys\" array".to_owned());
        };
        let mut keys = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            match parse_jwk(entry) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(reason) => {
                    let kid = entry.get("kid").and_then(Value::as_str).unwrap_or("-");
                    tracing::warn!(index, kid, %reason, "skipping unusable JWKS entry");
                }
            }
        }
        Ok(KeySet { keys })
    }

    /// Chooses the key for a token: by `kid`, or the only key when the token names none.
    pub fn select(&self, kid: Option<&str>) -> Selected<'_> {
        match kid {
            Some(kid) => {
                self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).map_or(Selected::UnknownKid, Selected::Key)
            }
            None => match self.keys.as_slice() {
                [only] => Selected::Key(only),
                _ => Selected::Ambiguous,
            },
        }
    }

    /// The key ids, for log lines.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("-")).collect()
    }
}

/// The JWK members we read.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    key_use: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// Turns one JWK into a verification key. `Ok(None)` means "not a signature key, ignore
/// quietly" (an encryption key); `Err` means "meant for us but unusable" (logged).
fn parse_jwk(entry: &Value) -> Result<Option<VerifyKey>, String> {
    let raw = RawJwk::deserialize(entry).map_err(|e| format!("not a JWK: {e}"))?;
    if raw.key_use.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = &raw.key_ops {
        if !ops.iter().any(|op| op == "verify") {
            return Ok(None);
        }
    }
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => match crate::claims::accepted_algorithm(name) {
            Ok(alg) => Some(alg),
            Err(_) => return Err(format!("algorithm {name} is not accepted")),
        },
    };
    let field = |value: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let text = value.as_deref().ok_or_else(|| format!("missing {name}"))?;
        URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| format!("{name} is not base64url"))
    };
    let (kind, key) = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => {
            let n = field(&raw.n, "n")?;
            let e = field(&raw.e, "e")?;
            let n_trimmed = n.iter().skip_while(|b| **b == 0).count();
            if n_trimmed < 256 {
                return Err("RSA modulus shorter than 2048 bits".to_owned());
            }
            if e.is_empty() || e.len() > 8 {
                return Err("RSA exponent has a bad length".to_owned());
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (kind, len) = if crv == "P-256" { (KeyKind::EcP256, 32) } else { (KeyKind::EcP384, 48) };
            let x = field(&raw.x, "x")?;
            let y = field(&raw.y, "y")?;
            if x.len() != len || y.len() != len {
                return Err(format!("{crv} coordinates have a bad length"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (kind, DecodingKey::from_ec_der(&point))
        }
        ("OKP", Some("Ed25519")) => {
            let x = field(&raw.x, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key has a bad length".to_owned());
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
        }
        ("oct", _) => return Err("symmetric keys are never accepted".to_owned()),
        (kty, crv) => return Err(format!("unsupported key type {kty} {}", crv.unwrap_or_default())),
    };
    if let Some(alg) = alg {
        if !kind.accepts(alg) {
            return Err(format!("alg {alg:?} does not fit key type {}", raw.kty));
        }
    }
    Ok(Some(VerifyKey { kid: raw.kid, kind, alg, key }))
}

/// Where the remote key set comes from.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// A JWKS URL given directly.
    Jwks(String),
    /// An OIDC issuer whose discovery document names the JWKS URL.
    Discovery {
        /// `{issuer}/.well-known/openid-configuration`.
        discovery_url: String,
    },
}

/// A key set with the time it was fetched and a generation number.
pub(crate) struct Snapshot {
    pub keys: Arc<KeySet>,
    pub fetched_at: Option<Instant>,
    pub generation: u64,
}

/// State only the refreshing task touches (behind the async mutex).
#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    /// The JWKS URL found by discovery, once known.
    jwks_url: Option<String>,
}

/// The remote key cache.
pub(crate) struct RemoteKeys {
    source: KeySource,
    client: reqwest::Client,
    min_interval: Duration,
    max_age: Duration,
    current: RwLock<Arc<Snapshot>>,
    /// Held for the whole of a refresh, so concurrent callers share one fetch.
    refresh: tokio::sync::Mutex<RefreshState>,
    background_refresh: AtomicBool,
}

impl RemoteKeys {
    pub fn new(source: KeySource, client: reqwest::Client, min_interval: Duration, max_age: Duration) -> RemoteKeys {
        RemoteKeys {
            source,
            client,
            min_interval,
            max_age,
            current: RwLock::new(Arc::new(Snapshot {
                keys: Arc::new(KeySet::default()),
                fetched_at: None,
                generation: 0,
            })),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            background_refresh: AtomicBool::new(false),
        }
    }

    /// The key set as it is now (possibly empty).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Whether the snapshot is older than the maximum age.
    pub fn is_stale(&self, snapshot: &Snapshot) -> bool {
        snapshot.fetched_at.is_some_and(|at| at.elapsed() >= self.max_age)
    }

    /// Refreshes the key set unless another caller did so since `seen_generation` or the last
    /// attempt was too recent. Concurrent callers wait for one shared fetch. Returns the
    /// snapshot to use and, when it holds no keys, the reason.
    pub async fn refresh(&self, seen_generation: u64) -> (Arc<Snapshot>, Option<String>) {
        let mut state = self.refresh.lock().await;
        let snapshot = self.snapshot();
        if snapshot.generation != seen_generation {
            // Someone refreshed while we waited for the lock: share their result.
            return (snapshot, None);
        }
        let interval =
            if snapshot.fetched_at.is_none() { self.min_interval.min(COLD_RETRY_INTERVAL) } else { self.min_interval };
        if state.last_attempt.is_some_and(|at| at.elapsed() < interval) {
            let error = snapshot
                .fetched_at
                .is_none()
                .then(|| state.last_error.clone().unwrap_or_else(|| "no key set fetched yet".to_owned()));
            return (snapshot, error);
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch(&mut state).await {
            Ok(keys) => {
                tracing::info!(kids = ?keys.kids(), "fetched JWKS");
                state.last_error = None;
                let fresh = Arc::new(Snapshot {
                    keys: Arc::new(keys),
                    fetched_at: Some(Instant::now()),
                    generation: snapshot.generation + 1,
                });
                match self.current.write() {
                    Ok(mut guard) => *guard = Arc::clone(&fresh),
                    Err(poisoned) => *poisoned.into_inner() = Arc::clone(&fresh),
                }
                (fresh, None)
            }
            Err(error) => {
                tracing::warn!(%error, "fetching JWKS failed");
                state.last_error = Some(error.clone());
                let reason = snapshot.fetched_at.is_none().then_some(error);
                (snapshot, reason)
            }
        }
    }

    /// Starts a background refresh of a stale key set, unless one is running. The caller keeps
    /// using the stale keys meanwhile.
    pub fn refresh_in_background(self: &Arc<Self>, seen_generation: u64) {
        if self.background_refresh.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _ = this.refresh(seen_generation).await;
            this.background_refresh.store(false, Ordering::Release);
        });
    }

    /// Fetches the key set (running discovery first if needed).
    async fn fetch(&self, state: &mut RefreshState) -> Result<KeySet, String> {
        let jwks_url = match (&self.source, &state.jwks_url) {
            (KeySource::Jwks(url), _) => url.clone(),
            (KeySource::Discovery { .. }, Some(url)) => url.clone(),
            (KeySource::Discovery { discovery_url }, None) => {
                let doc = self.get_json(discovery_url).await?;
                let Some(url) = doc.get("jwks_uri").and_then(Value::as_str) else {
                    return Err(format!("{discovery_url} has no jwks_uri"));
                };
                check_url(url).map_err(|e| format!("{discovery_url}: jwks_uri: {e}"))?;
                state.jwks_url = Some(url.to_owned());
                url.to_owned()
            }
        };
        let doc = self.get_json(&jwks_url).await?;
        let keys = KeySet::from_jwks(&doc).map_err(|e| format!("{jwks_url}: {e}"))?;
        if keys.keys.is_empty() {
            return Err(format!("{jwks_url} has no usable signing keys"));
        }
        Ok(keys)
    }

    /// GETs a JSON document of bounded size.
    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let mut response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("fetching {url}: http status {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading {url}: {}", error_chain(&e)))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("{url}: document larger than {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    }
}

/// An error with its causes, "a: b: c" (reqwest hides the useful part in the source chain).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Checks that a configured or discovered URL is http(s).
pub(crate) fn check_url(url: &str) -> Result<(), IdentityError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| IdentityError::Config(format!("{url} is not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = parsed.host_str().unwrap_or_default();
            let loopback = host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                tracing::warn!(%url, "identity provider reached over plain http");
            }
            Ok(())
        }
        other => Err(IdentityError::Config(format!("{url}: scheme {other} is not http or https"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn skips_unusable_entries() {
        let ed_x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let doc = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "short"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
            {"kty": "OKP", "crv": "Ed25519", "x": ed_x, "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": ed_x, "kid": "bad-alg", "alg": "RS256"},
            {"kty": "OKP", "crv": "Ed25519", "x": ed_x, "kid": "hs", "alg": "HS256"},
            {"nonsense": true},
            {"kty": "OKP", "crv": "Ed25519", "x": ed_x, "kid": "good", "alg": "EdDSA"},
        ]});
        let set = KeySet::from_jwks(&doc).expect("a jwks");
        assert_eq!(set.kids(), vec!["good"]);
        assert!(KeySet::from_jwks(&json!({"nokeys": []})).is_err());
    }

    #[test]
    fn kind_compatibility() {
        assert!(KeyKind::Rsa.accepts(Algorithm::PS512));
        assert!(!KeyKind::Rsa.accepts(Algorithm::ES256));
        assert!(!KeyKind::EcP256.accepts(Algorithm::ES384));
        assert!(!KeyKind::Ed25519.accepts(Algorithm::RS256));
        assert!(!KeyKind::Rsa.accepts(Algorithm::HS256));
    }

    #[test]
    fn urls() {
        assert!(check_url("https://example.com/jwks").is_ok());
        assert!(check_url("http://127.0.0.1:1/jwks").is_ok());
        assert!(check_url("file:///etc/passwd").is_err());
        assert!(check_url("not a url").is_err());
    }
}
