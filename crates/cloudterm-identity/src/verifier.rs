//! The token verifier: its configuration, the dev and remote (JWKS/OIDC) constructors, and
//! `verify`, which checks algorithm, key, signature, time window, issuer, audience and
//! principal in that order.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use serde_json::Value;

use crate::cache::VerifiedCache;
use crate::claims::{self, VerifiedToken};
use crate::dev_issuer::DevIssuer;
use crate::error::{AuthError, IdentityError};
use crate::jwks::{self, KeySet, KeySource, RemoteKeys, Selected};

/// How to verify tokens from a real identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// The OIDC issuer URL (`iss`). Without `jwks_url`, its discovery document
    /// (`{issuer}/.well-known/openid-configuration`) names the JWKS. With it, tokens must carry
    /// this `iss` (with or without a trailing slash).
    pub issuer: Option<String>,
    /// The JWKS URL; when set, no discovery happens.
    pub jwks_url: Option<String>,
    /// Accepted audiences: a token's `aud` must name one of them. Empty means `aud` is not
    /// checked (not recommended: any token of the issuer would then be accepted).
    pub audiences: Vec<String>,
    /// The claim that names the principal: `sub` by default; any top-level claim name such as
    /// `email` or `https://example.com/user_id` works.
    pub principal_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// At most one JWKS refresh (triggered by an unknown `kid` or a failed fetch) per interval.
    /// While no key set was ever fetched, failed fetches are retried after at most 5 seconds.
    pub jwks_refresh_min_interval: Duration,
    /// A key set older than this is refreshed in the background (old keys stay in use).
    pub jwks_max_age: Duration,
    /// Timeout of each HTTP request to the identity provider.
    pub http_timeout: Duration,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            issuer: None,
            jwks_url: None,
            audiences: Vec::new(),
            principal_claim: "sub".to_owned(),
            leeway: Duration::from_secs(30),
            jwks_refresh_min_interval: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(600),
            http_timeout: Duration::from_secs(5),
        }
    }
}

/// Splits a comma-separated audience list (`CLOUDTERM_AUTH_AUDIENCE`), dropping blanks.
pub fn parse_audience_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect()
}

/// Verifies bearer tokens. Cheap to clone: the state is shared.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

struct Inner {
    keys: Keys,
    /// Accepted `iss` values; empty means not checked.
    issuers: Vec<String>,
    audiences: Vec<String>,
    principal_claim: String,
    leeway: Duration,
    description: String,
    cache: VerifiedCache,
}

enum Keys {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteKeys>),
}

impl Verifier {
    /// A verifier for the dev issuer's tokens: its one key, `iss` "cloudterm-dev", `aud`
    /// "cloudterm", principal in `sub`.
    pub fn dev(issuer: &DevIssuer) -> Verifier {
        // The JWKS we built ourselves always parses; an empty set would refuse every token.
        let keys = KeySet::from_jwks(&issuer.jwks()).unwrap_or_default();
        Verifier {
            inner: Arc::new(Inner {
                keys: Keys::Static(Arc::new(keys)),
                issuers: vec![DevIssuer::ISSUER.to_owned()],
                audiences: vec![DevIssuer::AUDIENCE.to_owned()],
                principal_claim: "sub".to_owned(),
                leeway: VerifierConfig::default().leeway,
                description: format!("dev issuer (Ed25519, kid {})", issuer.kid()),
                cache: VerifiedCache::default(),
            }),
        }
    }

    /// A verifier for a real identity provider (see [`VerifierConfig`]). Fails only on a
    /// configuration that cannot work; an unreachable provider is logged and retried later
    /// ([`Verifier::readiness`] reports it).
    pub async fn remote(cfg: VerifierConfig) -> Result<Verifier, IdentityError> {
        let issuer = cfg.issuer.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let jwks_url = cfg.jwks_url.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let source = match (issuer, jwks_url) {
            (_, Some(url)) => {
                jwks::check_url(url)?;
                KeySource::Jwks(url.to_owned())
            }
            (Some(issuer), None) => {
                jwks::check_url(issuer)?;
                KeySource::Discovery {
                    discovery_url: format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')),
                }
            }
            (None, None) => return Err(IdentityError::Config("set an issuer or a JWKS URL".to_owned())),
        };
        let principal_claim = cfg.principal_claim.trim();
        if principal_claim.is_empty() {
            return Err(IdentityError::Config("principal claim is empty".to_owned()));
        }
        if cfg.audiences.is_empty() {
            tracing::warn!(
                "no audience configured: any token from this issuer will be accepted; \
                 set CLOUDTERM_AUTH_AUDIENCE"
            );
        }
        // Auth0 issues `https://tenant.auth0.com/` (trailing slash), Keycloak and Supabase issue
        // theirs without: accept the configured issuer with and without one.
        let issuers = issuer
            .map(|iss| {
                let bare = iss.trim_end_matches('/').to_owned();
                vec![format!("{bare}/"), bare]
            })
            .unwrap_or_default();
        let client = reqwest::Client::builder()
            .timeout(cfg.http_timeout)
            .connect_timeout(cfg.http_timeout)
            .user_agent(concat!("cloudterm-identity/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| IdentityError::Config(format!("building http client: {e}")))?;

        let mut description = match &source {
            KeySource::Jwks(url) => format!("JWKS from {url}"),
            KeySource::Discovery { discovery_url } => {
                format!("JWKS via OIDC discovery at {discovery_url}")
            }
        };
        let _ = write!(
            description,
            " (issuer {}, audience {}, principal claim {principal_claim})",
            issuer.unwrap_or("not checked"),
            if cfg.audiences.is_empty() { "not checked".to_owned() } else { cfg.audiences.join(",") }
        );

        let remote = Arc::new(RemoteKeys::new(source, client, cfg.jwks_refresh_min_interval, cfg.jwks_max_age));
        // Try once now so the first request does not wait; failure is not fatal.
        let (_, error) = remote.refresh(0).await;
        if let Some(error) = error {
            tracing::warn!(%error, "identity provider not reachable yet; will retry");
        }
        Ok(Verifier {
            inner: Arc::new(Inner {
                keys: Keys::Remote(remote),
                issuers,
                audiences: cfg.audiences.clone(),
                principal_claim: principal_claim.to_owned(),
                leeway: cfg.leeway,
                description,
                cache: VerifiedCache::default(),
            }),
        })
    }

    /// One line for the start-up log: which keys, issuer and audience this verifier uses.
    pub fn describe(&self) -> String {
        self.inner.description.clone()
    }

    /// Ok when tokens can be verified now: always for the dev issuer; for a remote provider
    /// when a key set is cached or can be fetched (fetching is rate-limited).
    pub async fn readiness(&self) -> Result<(), IdentityError> {
        match &self.inner.keys {
            Keys::Static(_) => Ok(()),
            Keys::Remote(remote) => {
                let snapshot = remote.snapshot();
                if snapshot.fetched_at.is_some() {
                    return Ok(());
                }
                match remote.refresh(snapshot.generation).await {
                    (snapshot, _) if snapshot.fetched_at.is_some() => Ok(()),
                    (_, error) => Err(IdentityError::KeysUnavailable(
                        error.unwrap_or_else(|| "no key set fetched yet".to_owned()),
                    )),
                }
            }
        }
    }

    /// Verifies `token` (a compact JWS, without the `Bearer ` prefix) and returns its principal.
    ///
    /// A token that verified within the last minute is answered from a cache keyed by its
    /// exact bytes (see `cache.rs`); anything else gets the full check.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let token = token.trim();
        if let Some(cached) = self.inner.cache.get(token, self.key_generation()) {
            return Ok(cached);
        }
        let verified = self.verify_uncached(token).await?;
        let expires_in = verified
            .expires_at
            .and_then(|exp| (exp - chrono::Utc::now()).to_std().ok())
            .map(|left| left + self.inner.leeway)
            .unwrap_or_default();
        self.inner.cache.insert(token, &verified, expires_in, self.key_generation());
        Ok(verified)
    }

    /// Which key set is in use now: cached verdicts only count for the set that gave them, so
    /// a key the IdP withdraws stops working at the next refresh. Starts a background refresh
    /// when the set is older than its maximum age.
    fn key_generation(&self) -> u64 {
        match &self.inner.keys {
            Keys::Static(_) => 0,
            Keys::Remote(remote) => {
                let snapshot = remote.snapshot();
                if remote.is_stale(&snapshot) {
                    remote.refresh_in_background(snapshot.generation);
                }
                snapshot.generation
            }
        }
    }

    async fn verify_uncached(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let header = claims::parse_header(token)?;
        match &self.inner.keys {
            Keys::Static(keys) => self.verify_with(token, &header, keys),
            Keys::Remote(remote) => {
                let mut snapshot = remote.snapshot();
                if remote.is_stale(&snapshot) {
                    remote.refresh_in_background(snapshot.generation);
                }
                let need_refresh = snapshot.fetched_at.is_none()
                    || matches!(snapshot.keys.select(header.kid.as_deref()), Selected::UnknownKid);
                if need_refresh {
                    let (fresh, error) = remote.refresh(snapshot.generation).await;
                    if fresh.fetched_at.is_none() {
                        return Err(AuthError::KeysUnavailable(
                            error.unwrap_or_else(|| "no key set fetched yet".to_owned()),
                        ));
                    }
                    snapshot = fresh;
                }
                self.verify_with(token, &header, &snapshot.keys)
            }
        }
    }

    fn verify_with(
        &self,
        token: &str,
        header: &claims::TokenHeader,
        keys: &KeySet,
    ) -> Result<VerifiedToken, AuthError> {
        let key = match keys.select(header.kid.as_deref()) {
            Selected::Key(key) => key,
            Selected::UnknownKid | Selected::Ambiguous => return Err(AuthError::UnknownKey),
        };
        if !key.accepts(header.alg) {
            return Err(AuthError::AlgorithmMismatch(format!("{:?}", header.alg)));
        }
        let inner = &self.inner;
        let mut validation = Validation::new(header.alg);
        validation.leeway = inner.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if inner.issuers.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&inner.issuers);
            required.push("iss");
        }
        if inner.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&inner.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|e| map_jwt_error(e.kind()))?;
        claims::verified_token(&data.claims, &inner.principal_claim)
    }
}

/// Maps the library's error to ours. Signature problems come before claim problems: the
/// library checks the signature first.
fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => AuthError::BadSignature,
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            AuthError::BadSignature
        }
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "aud" => AuthError::WrongAudience,
            "iss" => AuthError::WrongIssuer,
            other => AuthError::MissingClaim(claims::client_safe(other)),
        },
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::UnsupportedAlgorithm("for this key".to_owned())
        }
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_list() {
        assert_eq!(parse_audience_list(" a, b ,,c "), vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]);
        assert!(parse_audience_list(" , ").is_empty());
    }

    #[tokio::test]
    async fn remote_needs_a_source() {
        let err = Verifier::remote(VerifierConfig::default()).await.expect_err("no source");
        assert!(matches!(err, IdentityError::Config(_)));
        let cfg = VerifierConfig { jwks_url: Some("ftp://example.com/jwks".to_owned()), ..VerifierConfig::default() };
        assert!(Verifier::remote(cfg).await.is_err());
    }

    #[tokio::test]
    async fn dev_verifier_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = DevIssuer::load_or_create(dir.path()).expect("issuer");
        let verifier = Verifier::dev(&issuer);
        let token = issuer.mint("alice", Duration::from_secs(60)).expect("token");
        let verified = verifier.verify(&token).await.expect("valid");
        assert_eq!(verified.principal, "alice");
        assert!(verified.expires_at.is_some());
        assert!(verifier.describe().contains(issuer.kid()));
        assert!(verifier.readiness().await.is_ok());
    }
}
