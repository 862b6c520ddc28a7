//! Every attack on token verification we defend against, each tried for real against a
//! verifier backed by a live JWKS server (and the dev verifier where it applies).

use std::time::Duration;

use cloudterm_identity::{AuthError, DevIssuer, Verifier, VerifierConfig};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::support::{self, b64, claims, forge_hmac, now, raw_token, Idp, TestKey, AUD};

struct Setup {
    idp: Idp,
    verifier: Verifier,
    rsa_a: TestKey,
    rsa_b: TestKey,
    es: TestKey,
    ed: TestKey,
}

/// A JWKS server with: rsa-a (declares alg RS256), rsa-b (no alg), an ES256 key and an Ed25519
/// key; and a verifier for it.
async fn setup() -> Setup {
    let rsa_a = TestKey::rsa(support::RSA_A, "rsa-a");
    let rsa_b = TestKey::rsa(support::RSA_B, "rsa-b");
    let es = TestKey::es256("ec-1");
    let ed = TestKey::ed25519("ed-1");
    let idp =
        Idp::start("", vec![rsa_a.jwk_with_alg("RS256"), rsa_b.jwk.clone(), es.jwk.clone(), ed.jwk.clone()]).await;
    let verifier = idp.verifier().await;
    Setup { idp, verifier, rsa_a, rsa_b, es, ed }
}

#[tokio::test]
async fn every_asymmetric_algorithm_verifies() {
    let s = setup().await;
    let c = claims(&s.idp.issuer, "alice");
    for token in [
        s.rsa_a.sign(&c),
        s.rsa_b.sign_as(Algorithm::RS384, Some("rsa-b"), &c),
        s.rsa_b.sign_as(Algorithm::RS512, Some("rsa-b"), &c),
        s.rsa_b.sign_as(Algorithm::PS256, Some("rsa-b"), &c),
        s.rsa_b.sign_as(Algorithm::PS384, Some("rsa-b"), &c),
        s.rsa_b.sign_as(Algorithm::PS512, Some("rsa-b"), &c),
        s.es.sign(&c),
        s.ed.sign(&c),
    ] {
        let verified = s.verifier.verify(&token).await.expect("valid token");
        assert_eq!(verified.principal, "alice");
        assert_eq!(verified.expires_at.map(|t| t.timestamp()), c["exp"].as_i64());
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    let s = setup().await;
    let c = claims(&s.idp.issuer, "alice");
    for alg in ["none", "None", "NONE", "nOnE"] {
        for kid in [json!("rsa-a"), Value::Null] {
            let token = raw_token(&json!({"alg": alg, "typ": "JWT", "kid": kid}), &c, "");
            assert_eq!(s.verifier.verify(&token).await, Err(AuthError::UnsupportedAlgorithm(alg.to_owned())));
        }
    }
    // Also with a real signature glued on.
    let signed = s.rsa_a.sign(&c);
    let signature = signed.rsplit('.').next().expect("sig");
    let token = raw_token(&json!({"alg": "none", "kid": "rsa-a"}), &c, signature);
    assert!(matches!(s.verifier.verify(&token).await, Err(AuthError::UnsupportedAlgorithm(_))));
}

#[tokio::test]
async fn hmac_key_confusion_is_refused() {
    let s = setup().await;
    let c = claims(&s.idp.issuer, "alice");
    // The classic: HS256 "signed" with the RSA public key PEM as the HMAC secret.
    for alg in ["HS256", "HS384", "HS512"] {
        for secret in [support::RSA_A_PUB.as_bytes(), support::RSA_A_PUB.trim_end().as_bytes()] {
            let token = forge_hmac(alg, secret, json!({"kid": "rsa-a", "typ": "JWT"}), &c);
            assert_eq!(s.verifier.verify(&token).await, Err(AuthError::UnsupportedAlgorithm(alg.to_owned())));
        }
        // The same with the Ed25519 public key (raw bytes, and its JWK `x` text).
        let x = b64(&s.ed.raw_public);
        for secret in [s.ed.raw_public.as_slice(), x.as_bytes()] {
            let token = forge_hmac(alg, secret, json!({"kid": "ed-1"}), &c);
            assert_eq!(s.verifier.verify(&token).await, Err(AuthError::UnsupportedAlgorithm(alg.to_owned())));
        }
    }
    // And against the dev verifier, with the dev key's public bytes.
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = DevIssuer::load_or_create(dir.path()).expect("issuer");
    let dev = Verifier::dev(&issuer);
    let jwks = issuer.jwks();
    let x = jwks["keys"][0]["x"].as_str().expect("x").to_owned();
    let raw = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &x).expect("x");
    let dev_claims = json!({"sub": "alice", "iss": DevIssuer::ISSUER, "aud": DevIssuer::AUDIENCE,
                            "exp": now() + 600});
    for secret in [raw.as_slice(), x.as_bytes()] {
        let token = forge_hmac("HS256", secret, json!({"kid": issuer.kid()}), &dev_claims);
        assert_eq!(dev.verify(&token).await, Err(AuthError::UnsupportedAlgorithm("HS256".to_owned())));
    }
}

#[tokio::test]
async fn hmac_keys_in_the_jwks_are_never_used() {
    // An IdP (or an attacker who can edit its JWKS) publishing a symmetric key gets nothing.
    let secret = b"shared-secret-shared-secret-0000";
    let idp = Idp::start("", vec![json!({"kty": "oct", "k": b64(secret), "kid": "hs", "alg": "HS256"})]).await;
    let verifier = idp.verifier().await;
    let token = forge_hmac("HS256", secret, json!({"kid": "hs"}), &claims(&idp.issuer, "a"));
    assert!(matches!(verifier.verify(&token).await, Err(AuthError::UnsupportedAlgorithm(_))));
    assert!(verifier.readiness().await.is_err(), "no usable keys");
}

#[tokio::test]
async fn algorithm_must_fit_the_key() {
    let s = setup().await;
    let c = claims(&s.idp.issuer, "alice");
    // ES256 signature, but the header points at an RSA key.
    let token = s.es.sign_as(Algorithm::ES256, Some("rsa-a"), &c);
    assert_eq!(s.verifier.verify(&token).await, Err(AuthError::AlgorithmMismatch("ES256".to_owned())));
    // EdDSA signature pointing at the EC key, RS256 pointing at the Ed25519 key.
    let token = s.ed.sign_as(Algorithm::EdDSA, Some("ec-1"), &c);
    assert_eq!(s.verifier.verify(&token).await, Err(AuthError::AlgorithmMismatch("EdDSA".to_owned())));
    let token = s.rsa_a.sign_as(Algorithm::RS256, Some("ed-1"), &c);
    assert_eq!(s.verifier.verify(&token).await, Err(AuthError::AlgorithmMismatch("RS256".to_owned())));
    // Right key type, but the JWK says RS256 and the token says PS256.
    let token = s.rsa_a.sign_as(Algorithm::PS256, Some("rsa-a"), &c);
    assert_eq!(s.verifier.verify(&token).await, Err(AuthError::AlgorithmMismatch("PS256".to_owned())));
    // ES384 against a P-256 key.
    let token = raw_token(&json!({"alg": "ES384", "kid": "ec-1"}), &c, "AAAA");
    assert_eq!(s.verifier.verify(&token).await, Err(AuthError::AlgorithmMismatch("ES384".to_owned())));
}

#[tokio::test]
async fn garbage_is_malformed() {
    let s = setup().await;
    let long = "a".repeat(20_000);
    let garbage = [
        "",
        " ",
        "garbage",
        "a.b",
        "a.b.c",
        "..",
        "...",
        "a.b.c.d",
        "Bearer x.y.z",
        "e30.e30.",
        "bm90IGpzb24.e30.sig",
        "W10.e30.sig",
        "eyJhbGciOiJSUzI1NiJ9..sig",
        "eyJhbGciOjF9.e30.sig",
        "eyJhbGciOiJSUzI1NiIsImtpZCI6MX0.e30.sig",
        "\u{0}\u{1}\u{2}",
        "💥.💥.💥",
        long.as_str(),
    ];
    for token in garbage {
        assert_eq!(s.verifier.verify(token).await, Err(AuthError::Malformed), "{token:.40}");
    }
    // A well-formed header with a payload that is not JSON, correctly signed.
    let header = json!({"alg": "RS256", "kid": "rsa-a"});
    let message = format!("{}.{}", b64(serde_json::to_vec(&header).expect("json")), b64(b"not json"));
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &s.rsa_a.encoding, Algorithm::RS256).expect("sign");
    assert_eq!(s.verifier.verify(&format!("{message}.{sig}")).await, Err(AuthError::Malformed));
    // The unsupported-algorithm message never echoes control characters or long text.
    let token = raw_token(&json!({"alg": "x\n".repeat(40)}), &json!({}), "");
    let Err(AuthError::UnsupportedAlgorithm(shown)) = s.verifier.verify(&token).await else {
        panic!("expected UnsupportedAlgorithm");
    };
    assert!(shown.chars().count() <= 33 && !shown.contains('\n'), "{shown}");
}

#[tokio::test]
async fn foreign_keys_are_refused() {
    let s = setup().await;
    let c = claims(&s.idp.issuer, "alice");
    let foreign = TestKey::rsa(support::RSA_FOREIGN, "foreign-1");
    let before = s.idp.jwks_hits();
    // A kid the JWKS does not have.
    assert_eq!(s.verifier.verify(&foreign.sign(&c)).await, Err(AuthError::UnknownKey));
    // A kid it does have, signed by another key.
    let token = foreign.sign_as(Algorithm::RS256, Some("rsa-a"), &c);
    assert_eq!(s.verifier.verify(&token).await, Err(AuthError::BadSignature));
    let token = TestKey::ed25519("x").sign_as(Algorithm::EdDSA, Some("ed-1"), &c);
    assert_eq!(s.verifier.verify(&token).await, Err(AuthError::BadSignature));
    let token = TestKey::es256("x").sign_as(Algorithm::ES256, Some("ec-1"), &c);
    assert_eq!(s.verifier.verify(&token).await, Err(AuthError::BadSignature));
    // No kid while the set has several keys: refused rather than trying each.
    let token = s.rsa_a.sign_as(Algorithm::RS256, None, &c);
    assert_eq!(s.verifier.verify(&token).await, Err(AuthError::UnknownKey));
    // A key embedded in the header (`jwk`, `jku`, `x5u`) is ignored.
    let jwk = foreign.jwk.clone();
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("foreign-1".to_owned());
    header.jku = Some(format!("{}/evil.json", s.idp.issuer));
    header.jwk = serde_json::from_value(jwk).ok();
    let token = jsonwebtoken::encode(&header, &c, &foreign.encoding).expect("sign");
    assert_eq!(s.verifier.verify(&token).await, Err(AuthError::UnknownKey));
    // Unknown kids cost at most one refresh within the interval.
    assert!(s.idp.jwks_hits() <= before + 1);
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let s = setup().await;
    for key in [&s.rsa_a, &s.es, &s.ed] {
        let token = key.sign(&claims(&s.idp.issuer, "alice"));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(serde_json::to_vec(&claims(&s.idp.issuer, "admin")).expect("json"));
        parts[1] = &forged;
        assert_eq!(s.verifier.verify(&parts.join(".")).await, Err(AuthError::BadSignature));
        // A flipped bit in the signature too.
        let sig = token.rsplit('.').next().expect("sig");
        let mut bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).expect("sig");
        bytes[3] ^= 1;
        let token2 = format!("{}.{}", &token[..token.len() - sig.len() - 1], b64(&bytes));
        assert_eq!(s.verifier.verify(&token2).await, Err(AuthError::BadSignature));
    }
}

#[tokio::test]
async fn time_window_with_leeway() {
    let s = setup().await;
    let iss = s.idp.issuer.clone();
    let t = now();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(&iss, "alice");
        f(&mut c);
        s.ed.sign(&c)
    };
    let verify = |token: String| {
        let v = s.verifier.clone();
        async move { v.verify(&token).await }
    };
    // Leeway is 30 s by default.
    let expired = with(&|c| c["exp"] = json!(t - 120));
    assert_eq!(verify(expired).await, Err(AuthError::Expired));
    let barely = with(&|c| c["exp"] = json!(t - 10));
    assert!(verify(barely).await.is_ok());
    let future = with(&|c| c["nbf"] = json!(t + 120));
    assert_eq!(verify(future).await, Err(AuthError::NotYetValid));
    let soon = with(&|c| c["nbf"] = json!(t + 10));
    assert!(verify(soon).await.is_ok());
    let no_exp = with(&|c| {
        c.as_object_mut().expect("object").remove("exp");
    });
    assert_eq!(verify(no_exp).await, Err(AuthError::MissingClaim("exp".to_owned())));
    let string_exp = with(&|c| c["exp"] = json!("tomorrow"));
    assert_eq!(verify(string_exp).await, Err(AuthError::MissingClaim("exp".to_owned())));

    // With no leeway, 10 s expired is expired.
    let cfg = VerifierConfig { leeway: Duration::ZERO, ..s.idp.jwks_config() };
    let strict = Verifier::remote(cfg).await.expect("verifier");
    let barely = with(&|c| c["exp"] = json!(t - 10));
    assert_eq!(strict.verify(&barely).await, Err(AuthError::Expired));
}

#[tokio::test]
async fn audience_and_issuer_are_checked() {
    let s = setup().await;
    let iss = s.idp.issuer.clone();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(&iss, "alice");
        f(&mut c);
        s.rsa_a.sign(&c)
    };
    for (token, expected) in [
        (with(&|c| c["aud"] = json!("https://other.api")), Err(AuthError::WrongAudience)),
        (with(&|c| c["aud"] = json!(["a", "b"])), Err(AuthError::WrongAudience)),
        (with(&|c| c["aud"] = json!([])), Err(AuthError::WrongAudience)),
        (
            with(&|c| {
                c.as_object_mut().expect("object").remove("aud");
            }),
            Err(AuthError::WrongAudience),
        ),
        (with(&|c| c["iss"] = json!("https://evil.example")), Err(AuthError::WrongIssuer)),
        (with(&|c| c["iss"] = json!(format!("{iss}/x"))), Err(AuthError::WrongIssuer)),
        (
            with(&|c| {
                c.as_object_mut().expect("object").remove("iss");
            }),
            Err(AuthError::WrongIssuer),
        ),
    ] {
        assert_eq!(s.verifier.verify(&token).await, expected);
    }
    // Several audiences in the token, one of them ours; our issuer with a trailing slash.
    let ok = with(&|c| c["aud"] = json!(["https://other.api", AUD]));
    assert!(s.verifier.verify(&ok).await.is_ok());
    let ok = with(&|c| c["iss"] = json!(format!("{iss}/")));
    assert!(s.verifier.verify(&ok).await.is_ok());

    // A list of accepted audiences.
    let cfg = VerifierConfig { audiences: vec!["first".to_owned(), "second".to_owned()], ..s.idp.jwks_config() };
    let multi = Verifier::remote(cfg).await.expect("verifier");
    assert!(multi.verify(&with(&|c| c["aud"] = json!("second"))).await.is_ok());
    assert_eq!(multi.verify(&with(&|c| c["aud"] = json!("third"))).await, Err(AuthError::WrongAudience));

    // The dev verifier insists on its own issuer and audience.
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = DevIssuer::load_or_create(dir.path()).expect("issuer");
    let dev = Verifier::dev(&issuer);
    assert!(dev.verify(&issuer.mint("a", Duration::from_secs(60)).expect("mint")).await.is_ok());
    assert_eq!(dev.verify(&s.ed.sign(&claims(DevIssuer::ISSUER, "a"))).await, Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn principal_rules() {
    let s = setup().await;
    let iss = s.idp.issuer.clone();
    let sign = |sub: Value| {
        let mut c = claims(&iss, "x");
        c["sub"] = sub;
        s.ed.sign(&c)
    };
    let invalid = |reason: &str| Err(AuthError::InvalidPrincipal(reason.to_owned()));
    let cases = [
        (json!(""), invalid("empty")),
        (json!("a".repeat(257)), invalid("longer than 256 bytes")),
        (json!("é".repeat(129)), invalid("longer than 256 bytes")),
        (json!("alice\u{0}"), invalid("contains control characters")),
        (json!("alice\nbob"), invalid("contains control characters")),
        (json!("\u{1b}[31mred"), invalid("contains control characters")),
        (json!(42), invalid("not a string")),
        // jsonwebtoken's own claim parser chokes on a non-scalar `sub`: refused all the same.
        (json!(["alice"]), Err(AuthError::Malformed)),
        (json!({"id": "alice"}), Err(AuthError::Malformed)),
        (Value::Null, Err(AuthError::MissingPrincipal)),
    ];
    for (sub, expected) in cases {
        assert_eq!(s.verifier.verify(&sign(sub.clone())).await, expected, "{sub}");
    }
    for ok in ["a".repeat(256), "../../x".to_owned(), "/etc".to_owned(), "auth0|abc".to_owned()] {
        let verified = s.verifier.verify(&sign(json!(ok))).await.expect("valid");
        assert_eq!(verified.principal, ok);
    }
    let mut c = claims(&iss, "x");
    c.as_object_mut().expect("object").remove("sub");
    assert_eq!(s.verifier.verify(&s.ed.sign(&c)).await, Err(AuthError::MissingPrincipal));
}

#[tokio::test]
async fn principal_claim_is_configurable() {
    let s = setup().await;
    let mut c = claims(&s.idp.issuer, "auth0|123");
    c["email"] = json!("alice@example.com");
    c["https://example.com/user_id"] = json!("user-42");
    let token = s.rsa_a.sign(&c);
    for (claim, expected) in
        [("sub", "auth0|123"), ("email", "alice@example.com"), ("https://example.com/user_id", "user-42")]
    {
        let cfg = VerifierConfig { principal_claim: claim.to_owned(), ..s.idp.jwks_config() };
        let verifier = Verifier::remote(cfg).await.expect("verifier");
        assert_eq!(verifier.verify(&token).await.expect("valid").principal, expected);
    }
    let cfg = VerifierConfig { principal_claim: "preferred_username".to_owned(), ..s.idp.jwks_config() };
    let verifier = Verifier::remote(cfg).await.expect("verifier");
    assert_eq!(verifier.verify(&token).await, Err(AuthError::MissingPrincipal));
}

#[tokio::test]
async fn errors_are_safe_and_mapped() {
    let s = setup().await;
    let token = TestKey::rsa(support::RSA_FOREIGN, "rsa-a").sign(&claims(&s.idp.issuer, "a"));
    let err = s.verifier.verify(&token).await.expect_err("refused");
    assert!(!err.is_unavailable());
    assert_eq!(err.code(), "invalid_token");
    let text = err.to_string();
    assert_eq!(text, text.to_lowercase());
    assert!(!text.ends_with('.'));
    assert_eq!(AuthError::Expired.code(), "token_expired");
    assert!(AuthError::KeysUnavailable("x".to_owned()).is_unavailable());
}
