//! The dev issuer: key persistence, file modes, racing creation, minting and its JWKS.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cloudterm_identity::{AuthError, DevIssuer, Verifier, IDENTITY_DIR, KEY_FILE};
use serde_json::{json, Value};

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64")).expect("json")
}

#[test]
fn load_or_create_is_stable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = DevIssuer::load_or_create(dir.path()).expect("create");
    let second = DevIssuer::load_or_create(dir.path()).expect("load");
    assert_eq!(first.kid(), second.kid());
    assert_eq!(first.jwks(), second.jwks());
    assert_eq!(first.key_path(), dir.path().join(IDENTITY_DIR).join(KEY_FILE));
    let other = tempfile::tempdir().expect("tempdir");
    let third = DevIssuer::load_or_create(other.path()).expect("create");
    assert_ne!(first.kid(), third.kid());
}

#[test]
fn key_file_is_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = DevIssuer::load_or_create(&dir.path().join("nested/data")).expect("create");
    let file_mode = std::fs::metadata(issuer.key_path()).expect("stat").permissions().mode();
    assert_eq!(file_mode & 0o777, 0o600);
    let dir_mode =
        std::fs::metadata(dir.path().join("nested/data").join(IDENTITY_DIR)).expect("stat").permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);
}

#[test]
fn racing_creation_yields_one_key() {
    for _round in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let threads = 16;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    barrier.wait();
                    DevIssuer::load_or_create(&path).expect("load_or_create").kid().to_owned()
                })
            })
            .collect();
        let kids: Vec<String> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
        assert!(kids.iter().all(|k| k == &kids[0]), "{kids:?}");
        // The kid on disk is the one everybody uses, and no temp files are left behind.
        let on_disk = DevIssuer::load_or_create(dir.path()).expect("load");
        assert_eq!(on_disk.kid(), kids[0]);
        let entries: Vec<_> = std::fs::read_dir(dir.path().join(IDENTITY_DIR))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from(KEY_FILE)]);
    }
}

#[test]
fn jwks_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = DevIssuer::load_or_create(dir.path()).expect("create");
    let jwks = issuer.jwks();
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    let x = key["x"].as_str().expect("x");
    assert_eq!(URL_SAFE_NO_PAD.decode(x).expect("x b64").len(), 32);
    assert_eq!(
        key,
        &json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": issuer.kid(),
                "alg": "EdDSA", "use": "sig"})
    );
    // kid = base64url(first 16 bytes of SHA-256(public key)).
    let raw = URL_SAFE_NO_PAD.decode(x).expect("x");
    let digest = ring::digest::digest(&ring::digest::SHA256, &raw);
    assert_eq!(issuer.kid(), URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]));
}

#[tokio::test]
async fn mint_verify_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = DevIssuer::load_or_create(dir.path()).expect("create");
    let verifier = Verifier::dev(&issuer);
    let ttl = Duration::from_secs(3600);
    let token = issuer.mint("alice", ttl).expect("mint");

    let header = decode_part(&token, 0);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], issuer.kid());
    let claims = decode_part(&token, 1);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], DevIssuer::ISSUER);
    assert_eq!(claims["aud"], DevIssuer::AUDIENCE);
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert_eq!(claims["exp"].as_i64(), Some(iat + 3600));
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    let again = issuer.mint("alice", ttl).expect("mint");
    assert_ne!(decode_part(&again, 1)["jti"], claims["jti"]);

    let verified = verifier.verify(&token).await.expect("verify");
    assert_eq!(verified.principal, "alice");
    assert_eq!(verified.expires_at.map(|t| t.timestamp()), Some(iat + 3600));
    // Path-like principals are valid principals.
    for principal in ["../../x", "/etc", "user@example.com", "agent:build-7"] {
        let token = issuer.mint(principal, ttl).expect("mint");
        assert_eq!(verifier.verify(&token).await.expect("verify").principal, principal);
    }
    assert!(verifier.readiness().await.is_ok());
    assert!(verifier.describe().starts_with("dev issuer (Ed25519, kid "));
}

#[tokio::test]
async fn another_data_dirs_token_is_refused() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let issuer_a = DevIssuer::load_or_create(a.path()).expect("a");
    let issuer_b = DevIssuer::load_or_create(b.path()).expect("b");
    let token = issuer_b.mint("alice", Duration::from_secs(60)).expect("mint");
    assert_eq!(Verifier::dev(&issuer_a).verify(&token).await, Err(AuthError::UnknownKey));
}
