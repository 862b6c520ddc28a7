//! Signed preview links: `v1.{sandbox}.{port}.{generation}.{expires}.{mac}`, an HMAC-SHA256
//! over the rest with the server's link key.
//!
//! A link names exactly one registration (sandbox, port and the registration's generation),
//! so unregistering a preview revokes every link to it, and registering it again does not
//! bring them back. The key is one file (`preview.secret_file`, default
//! `DATA_DIR/preview/link.key`), created with random bytes on first start.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Version tag of the link format.
const VERSION: &str = "v1";
/// Bytes of a newly made key.
const KEY_BYTES: usize = 32;

/// What a valid link grants: one registration, until `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClaims {
    /// The preview's sandbox.
    pub sandbox_id: String,
    /// The preview's port.
    pub port: u16,
    /// The registration it was issued for (`Preview::generation`).
    pub generation: i64,
    /// Unix seconds after which it is refused.
    pub expires: i64,
}

/// Why a link is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a link of ours: wrong shape or a signature that does not verify.
    #[error("the preview link is not valid")]
    Invalid,
    /// Signed by us, but past its expiry.
    #[error("the preview link expired")]
    Expired,
}

/// Signs and checks preview links with the server's key.
#[derive(Clone)]
pub struct LinkSigner {
    /// Keyed once; cloned per use.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner").finish_non_exhaustive()
    }
}

impl LinkSigner {
    /// A signer with this key (any length; HMAC hashes long keys).
    pub fn new(key: &[u8]) -> anyhow::Result<Self> {
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|err| anyhow::anyhow!("link key: {err}"))?;
        Ok(LinkSigner { mac })
    }

    /// Reads the configured key file, or (none configured) the default one under the data
    /// directory, creating it with a fresh random key when it does not exist.
    pub fn load(configured: Option<&Path>, data_dir: &Path) -> anyhow::Result<Self> {
        let (path, create) = match configured {
            Some(path) => (path.to_path_buf(), false),
            None => (data_dir.join("preview").join("link.key"), true),
        };
        if create && !path.exists() {
            create_key_file(&path)?;
        }
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "invalid setting preview.secret_file (CLOUDTERM_PREVIEW_SECRET_FILE): cannot read {}",
                path.display()
            )
        })?;
        let key = hex::decode(text.trim()).ok().filter(|key| key.len() >= KEY_BYTES).ok_or_else(|| {
            anyhow::anyhow!(
                "invalid setting preview.secret_file (CLOUDTERM_PREVIEW_SECRET_FILE): {} must hold at least 64 hex characters (e.g. `openssl rand -hex 32`)",
                path.display()
            )
        })?;
        LinkSigner::new(&key)
    }

    /// The token for `claims`.
    pub fn sign(&self, claims: &LinkClaims) -> String {
        let payload = payload(claims);
        let mac = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{mac}")
    }

    /// The claims of a token we signed that has not expired at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<LinkClaims, LinkError> {
        let (payload, mac) = token.rsplit_once('.').ok_or(LinkError::Invalid)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| LinkError::Invalid)?;
        self.mac(payload).verify_slice(&mac).map_err(|_| LinkError::Invalid)?;
        let parts: Vec<&str> = payload.split('.').collect();
        let [VERSION, sandbox_id, port, generation, expires] = parts.as_slice() else { return Err(LinkError::Invalid) };
        let claims = LinkClaims {
            sandbox_id: (*sandbox_id).to_owned(),
            port: port.parse().map_err(|_| LinkError::Invalid)?,
            generation: generation.parse().map_err(|_| LinkError::Invalid)?,
            expires: expires.parse().map_err(|_| LinkError::Invalid)?,
        };
        if now >= claims.expires {
            return Err(LinkError::Expired);
        }
        Ok(claims)
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        mac
    }
}

fn payload(claims: &LinkClaims) -> String {
    format!("{VERSION}.{}.{}.{}.{}", claims.sandbox_id, claims.port, claims.generation, claims.expires)
}

/// Writes a new random key, readable by the owner only, without ever exposing a partial file
/// (temp file, then a rename that does not replace a key another start made meanwhile).
fn create_key_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let key: [u8; KEY_BYTES] = rand::random();
    let temp = dir.join(format!(".link.key.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(hex::encode(key).as_bytes())?;
    file.sync_all()?;
    // A hard link fails if the key exists, so two servers starting at once keep one key.
    match std::fs::hard_link(&temp, path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err).with_context(|| format!("cannot create {}", path.display())),
    }
    let _ = std::fs::remove_file(&temp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> LinkClaims {
        LinkClaims { sandbox_id: "sbx_abc".into(), port: 8080, generation: 1_700_000_000_123, expires: 2_000 }
    }

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let signer = LinkSigner::new(&[7; 32]).expect("signer");
        let token = signer.sign(&claims());
        assert_eq!(signer.verify(&token, 1_999), Ok(claims()));
        assert_eq!(signer.verify(&token, 2_000), Err(LinkError::Expired));
    }

    #[test]
    fn forged_and_foreign_links_are_invalid() {
        let signer = LinkSigner::new(&[7; 32]).expect("signer");
        let token = signer.sign(&claims());
        let other = LinkSigner::new(&[8; 32]).expect("signer").sign(&claims());
        assert_eq!(signer.verify(&other, 0), Err(LinkError::Invalid), "another key");
        let longer = token.replacen(".2000.", ".9999999999.", 1);
        assert_eq!(signer.verify(&longer, 0), Err(LinkError::Invalid), "a changed expiry");
        let other_port = token.replacen(".8080.", ".8081.", 1);
        assert_eq!(signer.verify(&other_port, 0), Err(LinkError::Invalid), "a changed port");
        for junk in ["", ".", "v1", "a.b", "v1.sbx.80.1.2.!!!", &format!("{token}x")] {
            assert_eq!(signer.verify(junk, 0), Err(LinkError::Invalid), "{junk:?}");
        }
    }

    #[test]
    fn the_key_file_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = LinkSigner::load(None, dir.path()).expect("create");
        let second = LinkSigner::load(None, dir.path()).expect("reload");
        assert_eq!(second.verify(&first.sign(&claims()), 0), Ok(claims()), "the same key");
        let path = dir.path().join("preview/link.key");
        assert_eq!(std::fs::metadata(&path).expect("key").permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "abcd").expect("overwrite");
        let err = LinkSigner::load(Some(&path), dir.path()).expect_err("too short");
        assert!(err.to_string().contains("preview.secret_file"), "{err}");
    }
}
