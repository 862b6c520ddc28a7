//! Claims: the token header we parse ourselves (before trusting anything), the principal
//! rules, and turning verified claims into a `VerifiedToken`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::error::AuthError;

/// The longest principal accepted, in bytes.
pub const MAX_PRINCIPAL_BYTES: usize = 256;

/// Tokens longer than this are refused before any parsing (real ones are 1–4 KiB).
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The value of the configured principal claim (`sub` by default), checked by
    /// [`validate_principal`].
    pub principal: String,
    /// When the token expires (its `exp` claim).
    pub expires_at: Option<DateTime<Utc>>,
}

/// Checks that `principal` is usable: non-empty, at most [`MAX_PRINCIPAL_BYTES`] bytes and free
/// of control characters. Path-like values (`../x`, `/etc`) are valid here: the server maps
/// principals to storage names safely elsewhere. The error is a short reason.
pub fn validate_principal(principal: &str) -> Result<(), String> {
    if principal.is_empty() {
        return Err("empty".to_owned());
    }
    if principal.len() > MAX_PRINCIPAL_BYTES {
        return Err(format!("longer than {MAX_PRINCIPAL_BYTES} bytes"));
    }
    if principal.chars().any(char::is_control) {
        return Err("contains control characters".to_owned());
    }
    Ok(())
}

/// The parts of the JOSE header we look at before choosing a key.
#[derive(Debug)]
pub(crate) struct TokenHeader {
    /// The accepted asymmetric algorithm named by `alg`.
    pub alg: Algorithm,
    /// `kid`, if any.
    pub kid: Option<String>,
}

/// Parses the header of a compact JWS without trusting it, and refuses every algorithm that is
/// not asymmetric. This runs before any key is chosen, so `alg: none` and `HS*` (the
/// key-confusion attack) never reach a verification routine.
pub(crate) fn parse_header(token: &str) -> Result<TokenHeader, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(AuthError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| AuthError::Malformed)?;
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(AuthError::Malformed);
    };
    // RFC 7515 §4.1.11: a recipient must refuse a token with critical extensions it does not
    // understand, and we understand none.
    if map.contains_key("crit") {
        return Err(AuthError::Malformed);
    }
    let alg = match map.get("alg") {
        Some(Value::String(alg)) => accepted_algorithm(alg)?,
        Some(_) | None => return Err(AuthError::Malformed),
    };
    let kid = match map.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    Ok(TokenHeader { alg, kid })
}

/// Maps an `alg` header value to an algorithm we accept; everything symmetric or unknown is
/// refused.
pub(crate) fn accepted_algorithm(alg: &str) -> Result<Algorithm, AuthError> {
    Ok(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => return Err(AuthError::UnsupportedAlgorithm(client_safe(other))),
    })
}

/// Text from a token, made safe to echo in an error message: at most 32 characters, control
/// characters replaced.
pub(crate) fn client_safe(text: &str) -> String {
    let mut out: String = text.chars().take(32).map(|c| if c.is_control() { '?' } else { c }).collect();
    if text.chars().count() > 32 {
        out.push('…');
    }
    if out.is_empty() {
        out.push_str("(empty)");
    }
    out
}

/// Builds the `VerifiedToken` from claims whose signature, time window, issuer and audience
/// have already been checked.
pub(crate) fn verified_token(claims: &Value, principal_claim: &str) -> Result<VerifiedToken, AuthError> {
    let principal = match claims.get(principal_claim) {
        None | Some(Value::Null) => return Err(AuthError::MissingPrincipal),
        Some(Value::String(p)) => p,
        Some(_) => return Err(AuthError::InvalidPrincipal("not a string".to_owned())),
    };
    validate_principal(principal).map_err(AuthError::InvalidPrincipal)?;
    let expires_at =
        claims.get("exp").and_then(Value::as_f64).and_then(|exp| DateTime::<Utc>::from_timestamp(exp as i64, 0));
    Ok(VerifiedToken { principal: principal.clone(), expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_rules() {
        assert!(validate_principal("alice").is_ok());
        assert!(validate_principal("../../x").is_ok());
        assert!(validate_principal("/etc").is_ok());
        assert!(validate_principal("auth0|65f0c1").is_ok());
        assert!(validate_principal(&"a".repeat(256)).is_ok());
        assert!(validate_principal("").is_err());
        assert!(validate_principal(&"a".repeat(257)).is_err());
        assert!(validate_principal("a\0b").is_err());
        assert!(validate_principal("a\nb").is_err());
        assert!(validate_principal("a\u{7f}").is_err());
        assert!(validate_principal("a\u{85}").is_err());
    }

    #[test]
    fn header_refuses_symmetric_and_none() {
        for alg in ["none", "HS256", "HS384", "HS512", "hs256", "RSA-OAEP", ""] {
            assert!(matches!(accepted_algorithm(alg), Err(AuthError::UnsupportedAlgorithm(_))));
        }
        assert_eq!(accepted_algorithm("EdDSA"), Ok(Algorithm::EdDSA));
    }

    #[test]
    fn client_safe_truncates_and_strips() {
        assert_eq!(client_safe("a\nb"), "a?b");
        assert_eq!(client_safe(&"x".repeat(40)).chars().count(), 33);
        assert_eq!(client_safe(""), "(empty)");
    }

    #[test]
    fn header_shapes() {
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let ok = format!("{}.{}.sig", enc(r#"{"alg":"RS256","kid":"k"}"#), enc("{}"));
        let header = parse_header(&ok).expect("valid header");
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("k"));
        let crit = format!("{}.{}.sig", enc(r#"{"alg":"RS256","crit":["b64"],"b64":false}"#), enc("{}"));
        assert!(matches!(parse_header(&crit), Err(AuthError::Malformed)));
        assert!(matches!(parse_header("a.b"), Err(AuthError::Malformed)));
        assert!(matches!(parse_header("a.b.c.d"), Err(AuthError::Malformed)));
    }
}
