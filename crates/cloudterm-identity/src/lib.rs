//! JWT identity for cloudterm: the built-in dev issuer (an Ed25519 key in the data directory)
//! and the verifier that checks bearer tokens against it or against a real identity provider's
//! JWKS (found directly or through OIDC discovery).
//!
//! Only asymmetric algorithms are ever accepted (RS*, PS*, ES256, ES384, EdDSA); `none` and
//! every `HS*` are refused before a key is chosen, which rules out key-confusion attacks.
//!
//! ```no_run
//! # async fn demo(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//! use cloudterm_identity::{DevIssuer, Verifier};
//! let issuer = DevIssuer::load_or_create(dir)?;
//! let token = issuer.mint("alice", std::time::Duration::from_secs(3600))?;
//! let verified = Verifier::dev(&issuer).verify(&token).await?;
//! assert_eq!(verified.principal, "alice");
//! # Ok(()) }
//! ```

mod cache;
mod claims;
mod dev_issuer;
mod error;
mod jwks;
mod verifier;

pub use claims::{validate_principal, VerifiedToken, MAX_PRINCIPAL_BYTES};
pub use dev_issuer::{DevIssuer, IDENTITY_DIR, KEY_FILE, MAX_TTL};
pub use error::{AuthError, IdentityError};
pub use verifier::{parse_audience_list, Verifier, VerifierConfig};
