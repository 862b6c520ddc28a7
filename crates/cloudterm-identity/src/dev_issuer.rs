//! The built-in dev issuer: one Ed25519 key kept under the data directory (created on first
//! use, safely against concurrent start-ups), minting EdDSA tokens and publishing its JWKS.

use std::fs;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{json, Value};

use crate::claims::validate_principal;
use crate::error::IdentityError;

/// The directory under the data directory that holds the dev key.
pub const IDENTITY_DIR: &str = "identity";
/// The dev key's file name inside [`IDENTITY_DIR`].
pub const KEY_FILE: &str = "dev-ed25519.pk8";
/// The longest lifetime `mint` accepts (one year).
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// The built-in development issuer: an Ed25519 signing key in `DATA_DIR/identity/`.
pub struct DevIssuer {
    pkcs8: Vec<u8>,
    public_key: [u8; 32],
    kid: String,
    path: PathBuf,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("DevIssuer").field("kid", &self.kid).field("path", &self.path).finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// The `iss` of every dev token.
    pub const ISSUER: &'static str = "cloudterm-dev";
    /// The `aud` of every dev token.
    pub const AUDIENCE: &'static str = "cloudterm";

    /// Loads the key at `data_dir/identity/dev-ed25519.pk8`, creating it (mode 0600, in a 0700
    /// directory) if it does not exist. Two processes starting at once end up with the same
    /// key: the new key is written to a temporary file and hard-linked into place, which fails
    /// if a key already exists, and then the loser loads the winner's key.
    pub fn load_or_create(data_dir: &Path) -> Result<DevIssuer, IdentityError> {
        let dir = data_dir.join(IDENTITY_DIR);
        create_private_dir(&dir)?;
        let path = dir.join(KEY_FILE);
        // A few rounds only matter on filesystems without hard links, where a concurrent
        // creator's half-written file can be seen for a moment.
        let mut last_error = None;
        for _ in 0..50 {
            match fs::read(&path) {
                Ok(bytes) => match DevIssuer::from_pkcs8(bytes, path.clone()) {
                    Ok(issuer) => {
                        warn_if_loose(&path);
                        return Ok(issuer);
                    }
                    Err(error) => last_error = Some(error),
                },
                Err(error) if error.kind() == ErrorKind::NotFound => {
                    create_key(&dir, &path)?;
                    continue;
                }
                Err(source) => return Err(IdentityError::Io { action: "reading key", path, source }),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(last_error.unwrap_or_else(|| IdentityError::InvalidKey { path, reason: "could not be created".to_owned() }))
    }

    fn from_pkcs8(pkcs8: Vec<u8>, path: PathBuf) -> Result<DevIssuer, IdentityError> {
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| IdentityError::InvalidKey {
            path: path.clone(),
            reason: format!("not an Ed25519 PKCS#8 key ({e})"),
        })?;
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(pair.public_key().as_ref());
        let kid = key_id(&public_key);
        Ok(DevIssuer { pkcs8, public_key, kid, path })
    }

    /// The key id: base64url of the first 16 bytes of SHA-256 of the raw public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Where the key lives.
    pub fn key_path(&self) -> &Path {
        &self.path
    }

    /// Mints an EdDSA token for `principal` that is valid for `ttl`, with `kid` in the header
    /// and `sub`, `iss`, `aud`, `iat`, `nbf`, `exp` and a random `jti` in the claims.
    pub fn mint(&self, principal: &str, ttl: Duration) -> Result<String, IdentityError> {
        validate_principal(principal).map_err(IdentityError::InvalidPrincipal)?;
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(IdentityError::InvalidTtl(format!(
                "{}s is not between 1s and {}s",
                ttl.as_secs(),
                MAX_TTL.as_secs()
            )));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IdentityError::Signing("system clock is before 1970".to_owned()))?
            .as_secs();
        let mut jti = [0u8; 16];
        SystemRandom::new().fill(&mut jti).map_err(|_| IdentityError::Signing("no randomness".to_owned()))?;
        let claims = json!({
            "sub": principal,
            "iss": Self::ISSUER,
            "aud": Self::AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs().max(1),
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .map_err(|e| IdentityError::Signing(e.to_string()))
    }

    /// The public key set, as served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.public_key),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }]})
    }
}

/// base64url(SHA-256(public key)[..16]).
fn key_id(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16])
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_path_buf();
    move |source| IdentityError::Io { action, path, source }
}

/// Creates `dir` (and parents) with mode 0700 if missing.
fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error("creating directory", dir))
}

/// Writes a fresh key to a temporary file in `dir` and links it to `path` unless a key is
/// already there. Returns Ok in both cases; the caller then reads whichever key won.
fn create_key(dir: &Path, path: &Path) -> Result<(), IdentityError> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| IdentityError::InvalidKey {
        path: path.to_path_buf(),
        reason: "generating a key failed".to_owned(),
    })?;
    let mut suffix = [0u8; 8];
    rng.fill(&mut suffix).map_err(|_| IdentityError::Signing("no randomness".to_owned()))?;
    let tmp = dir.join(format!(".{KEY_FILE}.{}.{}.tmp", std::process::id(), URL_SAFE_NO_PAD.encode(suffix)));
    let result = write_new_private(&tmp, pkcs8.as_ref()).and_then(|()| {
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            // Another process or thread won the race: use its key.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            // No hard links here (some FUSE or network filesystems): fall back to creating
            // the final file exclusively; readers retry while it is being written.
            Err(_) => match write_new_private(path, pkcs8.as_ref()) {
                Err(IdentityError::Io { source, .. }) if source.kind() == ErrorKind::AlreadyExists => Ok(()),
                other => other,
            },
        }
    });
    let _ = fs::remove_file(&tmp);
    result?;
    if let Ok(dir_handle) = fs::File::open(dir) {
        let _ = dir_handle.sync_all();
    }
    tracing::info!(path = %path.display(), "dev issuer key ready");
    Ok(())
}

/// Creates `path` exclusively with mode 0600, writes `bytes` and syncs it.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_error("creating key", path))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_error("writing key", path))
}

/// Logs a warning when the key file can be read by others.
fn warn_if_loose(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "dev issuer key is readable by other users; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_is_stable_and_short() {
        let kid = key_id(&[1u8; 32]);
        assert_eq!(kid, key_id(&[1u8; 32]));
        assert_eq!(kid.len(), 22);
        assert_ne!(kid, key_id(&[2u8; 32]));
    }

    #[test]
    fn refuses_corrupt_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id_dir = dir.path().join(IDENTITY_DIR);
        fs::create_dir_all(&id_dir).expect("mkdir");
        fs::write(id_dir.join(KEY_FILE), b"garbage").expect("write");
        let err = DevIssuer::load_or_create(dir.path()).expect_err("corrupt key");
        assert!(matches!(err, IdentityError::InvalidKey { .. }), "{err}");
    }

    #[test]
    fn mint_refuses_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = DevIssuer::load_or_create(dir.path()).expect("issuer");
        let hour = Duration::from_secs(3600);
        assert!(matches!(issuer.mint("", hour), Err(IdentityError::InvalidPrincipal(_))));
        assert!(matches!(issuer.mint("a\0", hour), Err(IdentityError::InvalidPrincipal(_))));
        assert!(matches!(issuer.mint("alice", Duration::ZERO), Err(IdentityError::InvalidTtl(_))));
        assert!(!format!("{issuer:?}").contains("pkcs8"));
    }
}
