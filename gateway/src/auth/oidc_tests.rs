//! The OIDC relying party against a provider in this process whose every answer the test
//! writes: the table of forged ID tokens it must refuse, key rotation, refresh refusals.
//! Keys are made at test time (ECDSA P-256 with ring); nothing is committed.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use super::oidc::*;

const CLIENT: &str = "cvpn-test";
const SECRET: &str = "client-secret-0123456789";

pub(crate) struct Key {
    kid: String,
    pair: EcdsaKeyPair,
}

impl Key {
    pub(crate) fn new(kid: &str) -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Key {
            kid: kid.into(),
            pair,
        }
    }

    pub(crate) fn jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref(); // 0x04 || x || y
        json!({"kty":"EC","crv":"P-256","use":"sig","alg":"ES256","kid":self.kid,
            "x":B64.encode(&p[1..33]),"y":B64.encode(&p[33..65])})
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    pub(crate) fn token(&self, claims: &Value) -> String {
        self.sign(&json!({"alg":"ES256","kid":self.kid,"typ":"JWT"}), claims)
    }
}

#[derive(Default)]
pub(crate) struct Provider {
    pub(crate) jwks: Vec<Value>,
    /// The next answers of the token endpoint (code or refresh grant): status and body.
    pub(crate) token_answer: Option<(u16, Value)>,
    /// What the relying party sent to the token endpoint last.
    last_form: Vec<(String, String)>,
    jwks_fetches: u32,
}

pub(crate) type Shared = Arc<Mutex<Provider>>;

pub(crate) struct Idp {
    pub(crate) issuer: String,
    pub(crate) shared: Shared,
    pub(crate) rp: OidcRelyingParty,
}

pub(crate) async fn start() -> Idp {
    let shared: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let iss = issuer.clone();
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let i = iss.clone();
                async move {
                    Json(json!({
                        "issuer": i,
                        "authorization_endpoint": format!("{i}/auth"),
                        "token_endpoint": format!("{i}/token"),
                        "jwks_uri": format!("{i}/jwks"),
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["ES256", "HS256", "none"],
                    }))
                }
            }),
        )
        .route(
            "/jwks",
            get(|State(s): State<Shared>| async move {
                let mut p = s.lock().unwrap();
                p.jwks_fetches += 1;
                Json(json!({"keys": p.jwks.clone()}))
            }),
        )
        .route(
            "/token",
            post(
                |State(s): State<Shared>, Form(form): Form<Vec<(String, String)>>| async move {
                    let mut p = s.lock().unwrap();
                    p.last_form = form;
                    let (status, body) = p.token_answer.clone().unwrap();
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        Json(body),
                    )
                },
            ),
        )
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let rp = OidcRelyingParty::new(
        OidcClientSettings {
            issuer: issuer.clone(),
            client_id: CLIENT.into(),
            client_secret: Some(SECRET.into()),
            groups_claim: "groups".into(),
            username_claim: "email".into(),
            scopes: vec!["openid".into(), "email".into()],
            redirect_url: "https://vpn.example.test/oidc/callback".into(),
        },
        crate::http_client::client_tls(None).unwrap(),
    );
    Idp { issuer, shared, rp }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Idp {
    pub(crate) fn claims(&self, nonce: &str) -> Value {
        json!({"iss": self.issuer, "aud": CLIENT, "sub": "user-1", "email": "alice@example.test",
            "groups": ["eng", "ops"], "iat": now(), "exp": now() + 300, "nonce": nonce})
    }

    pub(crate) fn answer_with(&self, id_token: &str) {
        self.shared.lock().unwrap().token_answer = Some((
            200,
            json!({"access_token":"at","token_type":"Bearer","expires_in":300,
                "id_token": id_token, "refresh_token": "rt-1"}),
        ));
    }

    /// A sign-in up to the callback: the nonce and PKCE verifier the RP keeps.
    async fn authorize(&self) -> (String, String, String) {
        let a = self.rp.authorize().await.unwrap();
        (a.url, a.nonce, a.pkce_verifier)
    }
}

#[tokio::test]
async fn a_valid_sign_in_gives_the_user_and_groups_and_sends_the_pkce_verifier() {
    let idp = start().await;
    let key = Key::new("k1");
    idp.shared.lock().unwrap().jwks = vec![key.jwk()];
    let (url, nonce, verifier) = idp.authorize().await;
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(url.contains("nonce="), "{url}");
    assert!(url.contains("state="), "{url}");
    idp.answer_with(&key.token(&idp.claims(&nonce)));
    let id = idp.rp.finish("code-1", &nonce, &verifier).await.unwrap();
    assert_eq!(id.username, "alice@example.test");
    assert_eq!(id.subject, "user-1");
    assert_eq!(id.groups, vec!["eng", "ops"]);
    assert_eq!(id.refresh_token.as_deref(), Some("rt-1"));
    let form = idp.shared.lock().unwrap().last_form.clone();
    assert!(
        form.contains(&("code_verifier".into(), verifier.clone())),
        "{form:?}"
    );
    assert!(form.contains(&("code".into(), "code-1".into())));
}

/// An attacker who registered the victim's address at the IdP without verifying it must not
/// sign in under the victim's name.
#[tokio::test]
async fn an_unverified_email_does_not_name_the_user() {
    let idp = start().await;
    let key = Key::new("k1");
    idp.shared.lock().unwrap().jwks = vec![key.jwk()];
    for (verified, refused) in [
        (json!(false), true),
        (json!("false"), true),
        (json!(true), false),
        (Value::Null, false),
    ] {
        let (_, nonce, verifier) = idp.authorize().await;
        let mut claims = idp.claims(&nonce);
        if !verified.is_null() {
            claims["email_verified"] = verified.clone();
        }
        idp.answer_with(&key.token(&claims));
        let r = idp.rp.finish("code-1", &nonce, &verifier).await;
        match r {
            Err(OidcError::Invalid(m)) if refused => {
                assert!(m.contains("email_verified"), "{m}");
            }
            Ok(id) if !refused => assert_eq!(id.username, "alice@example.test"),
            other => panic!("email_verified {verified}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn forged_id_tokens_are_refused() {
    let idp = start().await;
    let key = Key::new("k1");
    let stranger = Key::new("k1"); // the same kid, another key
    idp.shared.lock().unwrap().jwks = vec![key.jwk()];
    let (_, nonce, verifier) = idp.authorize().await;
    let good = idp.claims(&nonce);
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let hs256 = {
        let header = B64.encode(json!({"alg":"HS256","typ":"JWT"}).to_string());
        let payload = B64.encode(good.to_string());
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let tag = ring::hmac::sign(&k, format!("{header}.{payload}").as_bytes());
        format!("{header}.{payload}.{}", B64.encode(tag.as_ref()))
    };
    let valid = key.token(&good);
    let unsigned = format!("{}.", valid.rsplit_once('.').unwrap().0);
    let alg_none = format!(
        "{}.{}.",
        B64.encode(json!({"alg":"none","typ":"JWT"}).to_string()),
        B64.encode(good.to_string())
    );
    let mut tampered = valid.split('.').map(str::to_string).collect::<Vec<_>>();
    tampered[1] = B64.encode(with("groups", json!(["admins"])).to_string());
    let cases: Vec<(&str, String)> = vec![
        ("alg none", alg_none),
        ("signature stripped", unsigned),
        ("wrong key, same kid", stranger.token(&good)),
        ("claims changed after signing", tampered.join(".")),
        ("HMAC with the client secret", hs256),
        (
            "wrong audience",
            key.token(&with("aud", json!("another-client"))),
        ),
        (
            "a token for another client id (azp)",
            key.token(&{
                let mut c = with("aud", json!([CLIENT, "another-client"]));
                c["azp"] = json!("another-client");
                c
            }),
        ),
        ("expired", key.token(&with("exp", json!(now() - 3600)))),
        (
            "wrong issuer",
            key.token(&with("iss", json!("https://evil.example"))),
        ),
        (
            "wrong nonce",
            key.token(&with("nonce", json!("replayed-nonce"))),
        ),
        (
            "no nonce",
            key.token(&{
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("nonce");
                c
            }),
        ),
        ("not a JWT", "garbage".to_string()),
        (
            "oversized groups claim",
            key.token(&with(
                "groups",
                json!((0..1000).map(|i| format!("g{i}")).collect::<Vec<_>>()),
            )),
        ),
        (
            "groups with a control character",
            key.token(&with("groups", json!(["a\nb"]))),
        ),
    ];
    for (what, token) in cases {
        idp.answer_with(&token);
        let r = idp.rp.finish("code-1", &nonce, &verifier).await;
        assert!(r.is_err(), "{what}: accepted {r:?}");
        let failure = crate::auth::AuthFailure::from(r.unwrap_err());
        assert_eq!(failure.reason(), "idp-refused", "{what}");
    }
    // The control: the same setup accepts the genuine token.
    idp.answer_with(&valid);
    assert!(idp.rp.finish("code-1", &nonce, &verifier).await.is_ok());
}

#[tokio::test]
async fn a_provider_error_at_the_token_endpoint_is_a_refusal() {
    let idp = start().await;
    let key = Key::new("k1");
    idp.shared.lock().unwrap().jwks = vec![key.jwk()];
    let (_, nonce, verifier) = idp.authorize().await;
    idp.shared.lock().unwrap().token_answer = Some((
        400,
        json!({"error":"invalid_grant","error_description":"code reused"}),
    ));
    let e = idp
        .rp
        .finish("code-1", &nonce, &verifier)
        .await
        .unwrap_err();
    assert!(matches!(e, OidcError::Refused(_)), "{e}");
}

#[tokio::test]
async fn rotated_keys_are_fetched_once_without_a_restart() {
    let idp = start().await;
    let old = Key::new("k1");
    idp.shared.lock().unwrap().jwks = vec![old.jwk()];
    let (_, nonce, verifier) = idp.authorize().await;
    // The provider rotates: a new key signs from now on.
    let new = Key::new("k2");
    idp.shared.lock().unwrap().jwks = vec![old.jwk(), new.jwk()];
    idp.answer_with(&new.token(&idp.claims(&nonce)));
    let fetches_before = idp.shared.lock().unwrap().jwks_fetches;
    idp.rp.finish("code-1", &nonce, &verifier).await.unwrap();
    assert_eq!(idp.shared.lock().unwrap().jwks_fetches, fetches_before + 1);
    // A token naming a key nobody has: one more look at most every few seconds, then refused.
    let ghost = Key::new("k3");
    idp.answer_with(&ghost.token(&idp.claims(&nonce)));
    assert!(idp.rp.finish("code-1", &nonce, &verifier).await.is_err());
    assert!(idp.rp.finish("code-1", &nonce, &verifier).await.is_err());
    assert_eq!(
        idp.shared.lock().unwrap().jwks_fetches,
        fetches_before + 1,
        "forged kids do not make us hammer the provider"
    );
}

#[tokio::test]
async fn a_refresh_updates_groups_and_a_refusal_or_another_subject_ends_it() {
    let idp = start().await;
    let key = Key::new("k1");
    idp.shared.lock().unwrap().jwks = vec![key.jwk()];
    let mut claims = idp.claims("n");
    claims.as_object_mut().unwrap().remove("nonce");
    claims["groups"] = json!(["eng"]);
    idp.answer_with(&key.token(&claims));
    let id = idp.rp.refresh("rt-1", "user-1").await.unwrap();
    assert_eq!(id.groups, vec!["eng"]);
    let form = idp.shared.lock().unwrap().last_form.clone();
    assert!(form.contains(&("grant_type".into(), "refresh_token".into())));
    claims["sub"] = json!("user-2");
    idp.answer_with(&key.token(&claims));
    assert!(
        idp.rp.refresh("rt-1", "user-1").await.is_err(),
        "another subject"
    );
    idp.shared.lock().unwrap().token_answer = Some((400, json!({"error":"invalid_grant"})));
    let e = idp.rp.refresh("rt-1", "user-1").await.unwrap_err();
    assert!(crate::auth::AuthFailure::from(e).ends_session());
}

/// A relying party of a provider at `addr` (plain HTTP, no client secret).
fn provider_at(addr: std::net::SocketAddr) -> OidcRelyingParty {
    OidcRelyingParty::new(
        OidcClientSettings {
            issuer: format!("http://{addr}"),
            client_id: CLIENT.into(),
            client_secret: None,
            groups_claim: "groups".into(),
            username_claim: "email".into(),
            scopes: vec![],
            redirect_url: "https://vpn.example.test/oidc/callback".into(),
        },
        crate::http_client::client_tls(None).unwrap(),
    )
}

#[tokio::test]
async fn an_unreachable_provider_is_not_a_refusal() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let rp = provider_at(addr);
    let e = rp.refresh("rt", "user-1").await.unwrap_err();
    let f = crate::auth::AuthFailure::from(e);
    assert_eq!(f.reason(), "idp-unreachable");
    assert!(
        !f.ends_session(),
        "the session keeps its access while the IdP is down"
    );
}

#[tokio::test]
async fn a_provider_that_never_answers_costs_each_sign_in_the_deadline_not_minutes() {
    // Accepts connections and never answers (nor closes them).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let rp = std::sync::Arc::new(
        provider_at(addr).with_discovery_deadline(std::time::Duration::from_millis(300)),
    );
    // Eight sign-ins at once: the first holds the discovery, the others queue behind it; all
    // give up at the deadline (on the old code each waited for the HTTP client's 120 s).
    let started = std::time::Instant::now();
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let rp = std::sync::Arc::clone(&rp);
            tokio::spawn(async move { rp.authorize().await })
        })
        .collect();
    for t in tries {
        let Err(e) = t.await.unwrap() else {
            panic!("a provider that never answers signed someone in")
        };
        assert_eq!(
            crate::auth::AuthFailure::from(e).reason(),
            "idp-unreachable"
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    held.abort();
}
