//! Remote verification against a live JWKS/OIDC server: discovery (issuer shapes of Auth0,
//! Keycloak, Supabase), a direct JWKS URL, key rotation, the refresh rate limit, refresh by age,
//! and an identity provider that is down at start-up.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudterm_identity::{AuthError, IdentityError, Verifier, VerifierConfig};
use serde_json::json;

use crate::support::{self, claims, eventually, Idp, TestKey, AUD};

fn discovery_config(issuer: &str) -> VerifierConfig {
    VerifierConfig { issuer: Some(issuer.to_owned()), audiences: vec![AUD.to_owned()], ..VerifierConfig::default() }
}

#[tokio::test]
async fn discovery_via_issuer_url() {
    let rsa = TestKey::rsa(support::RSA_A, "rsa-a");
    let es = TestKey::es256("ec-1");
    let ed = TestKey::ed25519("ed-1");
    // Keycloak-shaped issuer: a path, no trailing slash.
    let idp = Idp::start("/realms/dev", vec![rsa.jwk_with_alg("RS256"), es.jwk.clone(), ed.jwk.clone()]).await;
    let verifier = Verifier::remote(discovery_config(&idp.issuer)).await.expect("verifier");
    assert!(verifier.readiness().await.is_ok());
    assert_eq!(idp.discovery_hits(), 1);
    assert_eq!(idp.jwks_hits(), 1);
    for key in [&rsa, &es, &ed] {
        let token = key.sign(&claims(&idp.issuer, "alice"));
        assert_eq!(verifier.verify(&token).await.expect("valid").principal, "alice");
    }
    assert!(verifier.describe().contains("/realms/dev/.well-known/openid-configuration"));
    assert!(verifier.describe().contains(AUD));
    // Discovery is not repeated when the key set is refreshed.
    let unknown = TestKey::ed25519("new").sign(&claims(&idp.issuer, "alice"));
    let cfg = VerifierConfig { jwks_refresh_min_interval: Duration::ZERO, ..discovery_config(&idp.issuer) };
    let eager = Verifier::remote(cfg).await.expect("verifier");
    assert_eq!(eager.verify(&unknown).await, Err(AuthError::UnknownKey));
    assert_eq!(idp.discovery_hits(), 2);
    assert_eq!(idp.jwks_hits(), 3);
}

#[tokio::test]
async fn issuer_trailing_slash_shapes() {
    let rsa = TestKey::rsa(support::RSA_A, "rsa-a");
    // Auth0: the issuer is `https://tenant.auth0.com/`, with a trailing slash, in the discovery
    // document and in every token; operators often configure it without.
    let idp = Idp::start("", vec![rsa.jwk.clone()]).await;
    let auth0_iss = format!("{}/", idp.issuer);
    *idp.state.issuer.lock().expect("lock") = auth0_iss.clone();
    for configured in [idp.issuer.clone(), auth0_iss.clone()] {
        let verifier = Verifier::remote(discovery_config(&configured)).await.expect("verifier");
        let token = rsa.sign(&claims(&auth0_iss, "auth0|1"));
        assert_eq!(verifier.verify(&token).await.expect("valid").principal, "auth0|1");
        let token = rsa.sign(&claims(&idp.issuer, "auth0|2"));
        assert!(verifier.verify(&token).await.is_ok());
    }

    // Supabase: `https://<project>.supabase.co/auth/v1`.
    let idp = Idp::start("/auth/v1", vec![rsa.jwk.clone()]).await;
    let cfg =
        VerifierConfig { audiences: vec!["authenticated".to_owned()], ..discovery_config(&format!("{}/", idp.issuer)) };
    let verifier = Verifier::remote(cfg).await.expect("verifier");
    let mut c = claims(&idp.issuer, "8f14e45f-ceea-4f2a-9c52-aaaaaaaaaaaa");
    c["aud"] = json!("authenticated");
    c["role"] = json!("authenticated");
    assert!(verifier.verify(&rsa.sign(&c)).await.is_ok());
}

#[tokio::test]
async fn direct_jwks_url() {
    let rsa = TestKey::rsa(support::RSA_A, "rsa-a");
    let idp = Idp::start("", vec![rsa.jwk.clone()]).await;
    // Issuer set too: still checked, and no discovery happens.
    let verifier = idp.verifier().await;
    assert!(verifier.readiness().await.is_ok());
    assert!(verifier.describe().starts_with(&format!("JWKS from {}", idp.jwks_url)));
    assert!(verifier.verify(&rsa.sign(&claims(&idp.issuer, "a"))).await.is_ok());
    assert_eq!(verifier.verify(&rsa.sign(&claims("https://other", "a"))).await, Err(AuthError::WrongIssuer));
    assert_eq!(idp.discovery_hits(), 0);

    // No issuer configured: any `iss` (or none) passes, the signature still decides.
    let cfg = VerifierConfig { issuer: None, ..idp.jwks_config() };
    let any_issuer = Verifier::remote(cfg).await.expect("verifier");
    assert!(any_issuer.verify(&rsa.sign(&claims("https://other", "a"))).await.is_ok());
    assert!(any_issuer.describe().contains("issuer not checked"));

    // No audience configured: `aud` is not checked.
    let cfg = VerifierConfig { audiences: vec![], ..idp.jwks_config() };
    let any_aud = Verifier::remote(cfg).await.expect("verifier");
    let mut c = claims(&idp.issuer, "a");
    c["aud"] = json!("whatever");
    assert!(any_aud.verify(&rsa.sign(&c)).await.is_ok());
}

#[tokio::test]
async fn single_key_without_kid() {
    let ed = TestKey::ed25519("only");
    let mut jwk = ed.jwk.clone();
    jwk.as_object_mut().expect("object").remove("kid");
    let idp = Idp::start("", vec![jwk]).await;
    let verifier = idp.verifier().await;
    let token = ed.sign_as(jsonwebtoken::Algorithm::EdDSA, None, &claims(&idp.issuer, "a"));
    assert!(verifier.verify(&token).await.is_ok());
}

#[tokio::test]
async fn unusable_entries_are_skipped() {
    let rsa = TestKey::rsa(support::RSA_A, "rsa-a");
    let idp = Idp::start(
        "",
        vec![
            json!({"kty": "RSA", "kid": "broken", "n": "!!!", "e": "AQAB"}),
            json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"}),
            json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}),
            json!("not an object"),
            rsa.jwk.clone(),
        ],
    )
    .await;
    let verifier = idp.verifier().await;
    assert!(verifier.readiness().await.is_ok());
    assert!(verifier.verify(&rsa.sign(&claims(&idp.issuer, "a"))).await.is_ok());
}

#[tokio::test]
async fn key_rotation() {
    let a = TestKey::rsa(support::RSA_A, "key-a");
    let b = TestKey::rsa(support::RSA_B, "key-b");
    let idp = Idp::start("", vec![a.jwk.clone()]).await;
    let cfg = VerifierConfig { jwks_refresh_min_interval: Duration::from_millis(200), ..idp.jwks_config() };
    let verifier = Verifier::remote(cfg).await.expect("verifier");
    assert!(verifier.verify(&a.sign(&claims(&idp.issuer, "a"))).await.is_ok());
    assert_eq!(idp.jwks_hits(), 1);

    // The IdP switches to key B.
    idp.set_keys(vec![b.jwk.clone()]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let token_b = b.sign(&claims(&idp.issuer, "b"));
    assert_eq!(verifier.verify(&token_b).await.expect("valid").principal, "b");
    assert_eq!(idp.jwks_hits(), 2, "exactly one refresh");
    // Known now: no further fetch. Key A is gone from the set.
    assert!(verifier.verify(&token_b).await.is_ok());
    assert_eq!(idp.jwks_hits(), 2);
    assert_eq!(verifier.verify(&a.sign(&claims(&idp.issuer, "a"))).await, Err(AuthError::UnknownKey));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_kid_refresh_is_rate_limited() {
    let a = TestKey::rsa(support::RSA_A, "key-a");
    let idp = Idp::start("", vec![a.jwk.clone()]).await;
    let interval = Duration::from_millis(1500);
    let cfg = VerifierConfig { jwks_refresh_min_interval: interval, ..idp.jwks_config() };
    let verifier = Verifier::remote(cfg).await.expect("verifier");
    assert_eq!(idp.jwks_hits(), 1);
    tokio::time::sleep(interval + Duration::from_millis(100)).await;

    // 32 concurrent tokens with unknown kids: one shared refresh.
    let attacker = TestKey::ed25519("unused");
    let tokens: Vec<String> = (0..32)
        .map(|i| attacker.sign_as(jsonwebtoken::Algorithm::EdDSA, Some(&format!("kid-{i}")), &claims(&idp.issuer, "x")))
        .collect();
    let tasks: Vec<_> = tokens
        .iter()
        .cloned()
        .map(|token| {
            let verifier = verifier.clone();
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), Err(AuthError::UnknownKey));
    }
    assert_eq!(idp.jwks_hits(), 2, "one refresh for all of them");

    // More within the interval: none.
    for token in &tokens {
        assert_eq!(verifier.verify(token).await, Err(AuthError::UnknownKey));
    }
    assert_eq!(idp.jwks_hits(), 2);
    // Known keys keep working meanwhile, without fetches.
    assert!(verifier.verify(&a.sign(&claims(&idp.issuer, "a"))).await.is_ok());
    assert_eq!(idp.jwks_hits(), 2);

    // After the interval, one more.
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    for token in &tokens[..4] {
        assert_eq!(verifier.verify(token).await, Err(AuthError::UnknownKey));
    }
    assert_eq!(idp.jwks_hits(), 3);
}

#[tokio::test]
async fn stale_keys_are_refreshed_in_the_background() {
    let a = TestKey::rsa(support::RSA_A, "key-a");
    let idp = Idp::start("", vec![a.jwk.clone()]).await;
    let cfg = VerifierConfig {
        jwks_max_age: Duration::from_millis(200),
        jwks_refresh_min_interval: Duration::ZERO,
        ..idp.jwks_config()
    };
    let verifier = Verifier::remote(cfg).await.expect("verifier");
    let token = a.sign(&claims(&idp.issuer, "a"));
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(idp.jwks_hits(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The stale set still serves this request, and a refresh starts.
    assert!(verifier.verify(&token).await.is_ok());
    assert!(eventually(Duration::from_secs(5), || idp.jwks_hits() == 2).await);

    // If the IdP is down when the set goes stale, the old keys stay in use.
    idp.set_up(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(verifier.verify(&token).await.is_ok());
    assert!(eventually(Duration::from_secs(5), || idp.jwks_hits() == 3).await);
    assert!(verifier.verify(&token).await.is_ok());
    assert!(verifier.readiness().await.is_ok());
}

#[tokio::test]
async fn idp_down_at_start_then_up() {
    let a = TestKey::rsa(support::RSA_A, "key-a");
    let idp = Idp::start("/realms/dev", vec![a.jwk.clone()]).await;
    idp.set_up(false);
    let cfg = VerifierConfig { jwks_refresh_min_interval: Duration::from_millis(200), ..discovery_config(&idp.issuer) };
    // Start-up does not fail.
    let verifier = Verifier::remote(cfg).await.expect("verifier despite the IdP being down");
    let err = verifier.readiness().await.expect_err("not ready");
    assert!(matches!(err, IdentityError::KeysUnavailable(_)), "{err}");
    assert!(err.to_string().contains("503"), "{err}");
    let token = a.sign(&claims(&idp.issuer, "alice"));
    let err = verifier.verify(&token).await.expect_err("unavailable");
    assert!(err.is_unavailable(), "{err}");

    idp.set_up(true);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(verifier.readiness().await.is_ok());
    assert_eq!(verifier.verify(&token).await.expect("valid").principal, "alice");
}

#[tokio::test]
async fn idp_unreachable() {
    // Nothing listens on this port.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let cfg = VerifierConfig {
        jwks_url: Some(format!("http://127.0.0.1:{port}/jwks.json")),
        audiences: vec![AUD.to_owned()],
        ..VerifierConfig::default()
    };
    let verifier = Verifier::remote(cfg).await.expect("verifier");
    assert!(matches!(verifier.readiness().await, Err(IdentityError::KeysUnavailable(_))));
    let token = TestKey::ed25519("k").sign(&claims("x", "a"));
    assert!(matches!(verifier.verify(&token).await, Err(AuthError::KeysUnavailable(_))));
    // Garbage is still refused as garbage, without a fetch.
    assert_eq!(verifier.verify("garbage").await, Err(AuthError::Malformed));
}

#[tokio::test]
async fn slow_idp_times_out() {
    let a = TestKey::rsa(support::RSA_A, "key-a");
    let idp = Idp::start("", vec![a.jwk.clone()]).await;
    idp.state.hang.store(true, Ordering::SeqCst);
    let cfg = VerifierConfig { http_timeout: Duration::from_millis(300), ..idp.jwks_config() };
    let started = std::time::Instant::now();
    let verifier = Verifier::remote(cfg).await.expect("verifier");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(verifier.readiness().await.is_err());
}

#[tokio::test]
async fn discovery_without_jwks_uri() {
    let idp = Idp::start("", vec![]).await;
    idp.state.omit_jwks_uri.store(true, Ordering::SeqCst);
    let verifier = Verifier::remote(discovery_config(&idp.issuer)).await.expect("verifier");
    let err = verifier.readiness().await.expect_err("no jwks_uri");
    assert!(err.to_string().contains("jwks_uri"), "{err}");
}
