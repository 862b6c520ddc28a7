//! The two error types of this crate: `AuthError` (a token was refused) and `IdentityError`
//! (setting up the issuer or the verifier failed).

use std::path::PathBuf;

/// Why a bearer token was refused.
///
/// Every variant means "401 Unauthorized" to the server except [`AuthError::KeysUnavailable`],
/// which means "503": the token may be fine but the signing keys could not be fetched. Messages
/// are safe to show to the client: they never contain key material, and any text taken from the
/// token itself is truncated and stripped of control characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a compact JWS (three base64url parts with a JSON header and payload), or too long.
    #[error("malformed token")]
    Malformed,
    /// The header names an algorithm that is never accepted (`none`, any `HS*`, or unknown).
    #[error("unsupported token algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// The header's algorithm cannot be used with the key it selects (wrong `kty`/`crv`, or the
    /// key's own `alg` differs).
    #[error("token algorithm {0} does not match its signing key")]
    AlgorithmMismatch(String),
    /// No known key matches the token's `kid` (even after refreshing the key set).
    #[error("token signing key is not known")]
    UnknownKey,
    /// The signature does not verify with the selected key.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` is in the past by more than the leeway.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future by more than the leeway.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `aud` is missing or names none of the accepted audiences.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// `iss` is missing or is not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// A registered claim this verifier requires (such as `exp`) is missing or not a number.
    #[error("token is missing the {0} claim")]
    MissingClaim(String),
    /// The configured principal claim is absent.
    #[error("token has no principal claim")]
    MissingPrincipal,
    /// The principal claim is present but unusable (not a string, empty, too long, control
    /// characters).
    #[error("invalid principal: {0}")]
    InvalidPrincipal(String),
    /// The signing keys could not be fetched from the identity provider (maps to 503).
    #[error("signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// `true` when the failure is ours (keys unreachable) rather than the token's: serve 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable(_))
    }

    /// A stable snake_case code for the JSON error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            AuthError::KeysUnavailable(_) => "identity_unavailable",
            _ => "invalid_token",
        }
    }
}

/// Setting up identity failed: the dev key could not be read or written, the verifier
/// configuration is wrong, or the identity provider could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a file or directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("creating directory", "reading key", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The stored dev key is not a valid Ed25519 PKCS#8 document.
    #[error("invalid key in {path}: {reason}")]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The verifier configuration cannot work (no issuer nor JWKS URL, a bad URL, ...).
    #[error("invalid identity configuration: {0}")]
    Config(String),
    /// The principal given to `mint` would be refused by every verifier.
    #[error("invalid principal: {0}")]
    InvalidPrincipal(String),
    /// The token lifetime is zero or too large.
    #[error("invalid token lifetime: {0}")]
    InvalidTtl(String),
    /// Signing a token failed.
    #[error("signing token: {0}")]
    Signing(String),
    /// The identity provider's keys could not be fetched (or it served none we can use).
    #[error("signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}
