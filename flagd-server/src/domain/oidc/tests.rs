//! The trust policy checks, claim matching, time checks and the JWKS cache's rate limit, against
//! an in-process issuer on port 0 (the end-to-end cases against a real server are in
//! `tests/tests/oidc.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use serde_json::json;

use super::*;
use crate::domain::Rejection;

const NOW: i64 = 1_800_000_000;

/// An ES256 key: its private half for signing, its JWK for the issuer's key set.
struct Key {
    kid: String,
    encoding: jsonwebtoken::EncodingKey,
    jwk: Value,
}

impl Key {
    fn new(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate().unwrap();
        let point = pair.public_key_raw();
        assert_eq!(
            (point.len(), point[0]),
            (65, 4),
            "an uncompressed P-256 point"
        );
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Key {
            kid: kid.to_owned(),
            encoding: jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                        "x": b64(&point[1..33]), "y": b64(&point[33..])}),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// An issuer on port 0 serving discovery and a JWKS the test can change, counting JWKS fetches.
struct TestIssuer {
    url: String,
    jwks: Arc<std::sync::Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    async fn start(keys: &[&Key]) -> TestIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let jwks = Arc::new(std::sync::Mutex::new(
            json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted, issuer) = (jwks.clone(), fetches.clone(), url.clone());
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let issuer = issuer.clone();
                    async move {
                        axum::Json(json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")}))
                    }
                }),
            )
            .route(
                "/moved",
                axum::routing::get(|| async {
                    (
                        axum::http::StatusCode::FOUND,
                        [(axum::http::header::LOCATION, "http://192.0.2.1:9/keys")],
                    )
                }),
            )
            .route(
                "/keys",
                axum::routing::get(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().unwrap().clone();
                    async move { axum::Json(body) }
                }),
            );
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        TestIssuer {
            url,
            jwks,
            fetches,
            server,
        }
    }

    fn publish(&self, keys: &[&Key]) {
        *self.jwks.lock().unwrap() =
            json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }

    fn oidc(&self, extra: &str) -> Oidc {
        let text = format!(
            r#"
            [[issuers]]
            issuer = "{}"
            audience = "flagd"
            {extra}
            [[issuers.rules]]
            name = "web main"
            claims = {{ repository = "acme/web", ref = "refs/heads/main" }}
            role = "admin"
            environments = ["production"]
            [[issuers.rules]]
            claims = {{ repository = "acme/*", ref = "refs/heads/release/*" }}
            role = "admin"
            environments = ["staging", "dev"]
            "#,
            self.url
        );
        Oidc::new(toml::from_str(&text).unwrap()).unwrap()
    }

    fn claims(&self, repository: &str, git_ref: &str) -> Value {
        json!({"iss": self.url, "aud": "flagd", "sub": format!("repo:{repository}:ref:{git_ref}"),
               "repository": repository, "ref": git_ref, "iat": NOW - 10, "exp": NOW + 290})
    }
}

fn kind(error: &DomainError) -> Option<Rejection> {
    match error {
        DomainError::Rejected { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[tokio::test]
async fn a_valid_token_maps_to_its_rule_and_attribution() {
    let key = Key::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let oidc = issuer.oidc("");
    let token = key.sign(&issuer.claims("acme/web", "refs/heads/main"));
    let principal = oidc.authenticate(&token, NOW).await.unwrap();
    assert_eq!(principal.role, Role::Admin);
    assert_eq!(principal.environments, Some(vec!["production".to_owned()]));
    assert_eq!(
        principal.actor,
        "oidc:127.0.0.1:repo:acme/web:ref:refs/heads/main"
    );
    assert!(matches!(&principal.credential, Credential::Oidc { rule, .. } if rule == "web main"));
    // Globs: `*` spans slashes; the second rule has no name, so its position names it.
    let release = key.sign(&issuer.claims("acme/api", "refs/heads/release/2.1/hotfix"));
    let principal = oidc.authenticate(&release, NOW).await.unwrap();
    assert_eq!(
        principal.environments,
        Some(vec!["dev".to_owned(), "staging".to_owned()])
    );
    assert!(matches!(&principal.credential, Credential::Oidc { rule, .. } if rule == "rules[1]"));
    // No rule: 403 naming issuer and subject, never the token.
    let other = key.sign(&issuer.claims("evil/web", "refs/heads/main"));
    let error = oidc.authenticate(&other, NOW).await.unwrap_err();
    assert_eq!(kind(&error), Some(Rejection::Forbidden));
    let message = error.to_string();
    assert!(
        message.contains(&issuer.url) && message.contains("repo:evil/web"),
        "{message}"
    );
    assert!(
        message.contains(r#"its claims: ref="refs/heads/main", repository="evil/web""#),
        "{message}"
    );
    assert!(!message.contains(&other), "{message}");
    // One JWKS fetch served all three.
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    // Counted per issuer and result; what names no trusted issuer, under "untrusted".
    assert!(oidc.authenticate("eyJ.e30.x", NOW).await.is_err());
    let mut metrics = String::new();
    oidc.render_metrics(&mut metrics);
    for line in [
        format!(
            "flagd_oidc_authentications_total{{issuer=\"{}\",result=\"accepted\"}} 2",
            issuer.url
        ),
        format!(
            "flagd_oidc_authentications_total{{issuer=\"{}\",result=\"forbidden\"}} 1",
            issuer.url
        ),
        format!(
            "flagd_oidc_authentications_total{{issuer=\"{}\",result=\"refused\"}} 0",
            issuer.url
        ),
        "flagd_oidc_authentications_total{issuer=\"untrusted\",result=\"refused\"} 1".to_owned(),
        format!(
            "flagd_oidc_jwks_fetches_total{{issuer=\"{}\",result=\"ok\"}} 1",
            issuer.url
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn the_audience_and_the_header_are_checked_strictly() {
    let key = Key::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let oidc = issuer.oidc("");
    let base = issuer.claims("acme/web", "refs/heads/main");
    let verdict = |aud: Option<Value>| {
        let mut claims = base.clone();
        match aud {
            Some(aud) => claims["aud"] = aud,
            None => {
                claims.as_object_mut().unwrap().remove("aud");
            }
        }
        let token = key.sign(&claims);
        let oidc = &oidc;
        async move { oidc.authenticate(&token, NOW).await.map(|_| ()) }
    };
    // Absent, or not a string (nor an array of strings), is no audience at all.
    for aud in [
        None,
        Some(json!(null)),
        Some(json!(5)),
        Some(json!({"flagd": 1})),
        Some(json!(["flagd", 5])),
    ] {
        let error = verdict(aud.clone()).await.unwrap_err();
        assert!(error.to_string().contains("audience"), "{aud:?}: {error}");
    }
    assert!(verdict(Some(json!(["other", "flagd"]))).await.is_ok());
    assert!(verdict(Some(json!("flagd"))).await.is_ok());
    // A header requiring extensions we do not know is refused (RFC 7515 §4.1.11).
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let signed = jsonwebtoken::encode(&header, &base, &key.encoding).unwrap();
    let payload = signed.split('.').nth(1).unwrap().to_owned();
    let crit = format!(
        "{}.{payload}.c2ln",
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"ES256","kid":"k1","crit":["exp"]}"#)
    );
    let error = oidc.authenticate(&crit, NOW).await.unwrap_err();
    assert!(error.to_string().contains("crit"), "{error}");
}

#[tokio::test]
async fn redirects_to_plain_http_are_not_followed() {
    let key = Key::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let oidc = issuer.oidc(&format!("jwks_uri = \"{}/moved\"", issuer.url));
    let error = oidc
        .authenticate(
            &key.sign(&issuer.claims("acme/web", "refs/heads/main")),
            NOW,
        )
        .await
        .unwrap_err();
    assert_eq!(kind(&error), Some(Rejection::Unavailable), "{error}");
    assert!(error.to_string().contains("redirect"), "{error}");
}

#[tokio::test]
async fn times_are_checked_with_a_bounded_skew() {
    let key = Key::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let oidc = issuer.oidc(r#"clock_skew = "30s""#);
    let mut claims = issuer.claims("acme/web", "refs/heads/main");
    let check = |claims: &Value, now: i64| {
        let token = key.sign(claims);
        let oidc = &oidc;
        async move { oidc.authenticate(&token, now).await }
    };
    // Expired 20 s ago: within the skew. 40 s ago: refused.
    assert!(check(&claims, NOW + 290 + 20).await.is_ok());
    let error = check(&claims, NOW + 290 + 40).await.unwrap_err();
    assert!(error.to_string().contains("expired 40s ago"), "{error}");
    // Not valid before.
    claims["nbf"] = json!(NOW + 100);
    let error = check(&claims, NOW).await.unwrap_err();
    assert!(error.to_string().contains("nbf"), "{error}");
    claims["nbf"] = json!(NOW + 20);
    assert!(check(&claims, NOW).await.is_ok());
    // Issued in the future; fractional NumericDates are fine.
    let mut future = issuer.claims("acme/web", "refs/heads/main");
    future["iat"] = json!(NOW + 60);
    future["exp"] = json!(NOW + 120);
    assert_eq!(
        kind(&check(&future, NOW).await.unwrap_err()),
        Some(Rejection::Unauthorized)
    );
    future["iat"] = json!((NOW as f64) - 0.5);
    assert!(check(&future, NOW).await.is_ok());
    // Lifetime beyond an hour, and missing exp / iat.
    let mut long = issuer.claims("acme/web", "refs/heads/main");
    long["exp"] = json!(NOW - 10 + 3601);
    let error = check(&long, NOW).await.unwrap_err();
    assert!(error.to_string().contains("lifetime"), "{error}");
    for missing in ["exp", "iat"] {
        let mut claims = issuer.claims("acme/web", "refs/heads/main");
        claims.as_object_mut().unwrap().remove(missing);
        let error = check(&claims, NOW).await.unwrap_err();
        assert!(error.to_string().contains(missing), "{error}");
    }
}

#[tokio::test]
async fn unknown_key_ids_refetch_the_jwks_at_most_once_per_interval() {
    let old = Key::new("old");
    let new = Key::new("new");
    let issuer = TestIssuer::start(&[&old]).await;
    let oidc = issuer.oidc(r#"min_refresh_interval = "30s""#);
    let claims = issuer.claims("acme/web", "refs/heads/main");
    let fetches = || issuer.fetches.load(Ordering::SeqCst);
    assert!(oidc.authenticate(&old.sign(&claims), NOW).await.is_ok());
    assert_eq!(fetches(), 1);
    // Unknown kid right after a fetch: refused without fetching again.
    let rotated = new.sign(&claims);
    let error = oidc.authenticate(&rotated, NOW + 5).await.unwrap_err();
    assert_eq!(kind(&error), Some(Rejection::Unauthorized));
    assert!(error.to_string().contains("\"new\""), "{error}");
    assert_eq!(fetches(), 1);
    // After the interval: fetched again, still unknown.
    assert!(oidc.authenticate(&rotated, NOW + 31).await.is_err());
    assert_eq!(fetches(), 2);
    // Rotated in: found at the next allowed fetch, and no sooner.
    issuer.publish(&[&old, &new]);
    assert!(oidc.authenticate(&rotated, NOW + 40).await.is_err());
    assert_eq!(fetches(), 2);
    let principal = oidc.authenticate(&rotated, NOW + 62).await.unwrap();
    assert_eq!(principal.role, Role::Admin);
    assert_eq!(fetches(), 3);
    // Known keys need no fetch, however many requests.
    for _ in 0..5 {
        assert!(
            oidc.authenticate(&old.sign(&claims), NOW + 63)
                .await
                .is_ok()
        );
    }
    assert_eq!(fetches(), 3);
}

#[tokio::test]
async fn an_unreachable_issuer_is_unavailable_but_cached_keys_still_verify() {
    let key = Key::new("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let oidc = issuer.oidc(r#"min_refresh_interval = "0s""#);
    let claims = issuer.claims("acme/web", "refs/heads/main");
    assert!(oidc.authenticate(&key.sign(&claims), NOW).await.is_ok());
    issuer.server.abort();
    while !issuer.server.is_finished() {
        tokio::task::yield_now().await;
    }
    // Two hours later the cache is stale and the issuer down: the key fetched earlier verifies.
    let mut later = claims.clone();
    later["iat"] = json!(NOW + 7200);
    later["exp"] = json!(NOW + 7300);
    assert!(
        oidc.authenticate(&key.sign(&later), NOW + 7200)
            .await
            .is_ok()
    );
    // A key never seen cannot be verified: 503, naming the issuer.
    let unseen = Key::new("k2");
    let error = oidc
        .authenticate(&unseen.sign(&later), NOW + 7200)
        .await
        .unwrap_err();
    assert_eq!(kind(&error), Some(Rejection::Unavailable), "{error}");
    assert!(error.to_string().contains(&issuer.url), "{error}");
    assert!(oidc.describe()["issuers"][0]["jwks"]["last_error"].is_string());
}

#[test]
fn configuration_errors_name_the_field() {
    let issuer = r#"issuer = "https://token.actions.githubusercontent.com"
audience = "flagd""#;
    let rule = r#"[[issuers.rules]]
claims = { repository = "acme/web" }
role = "admin""#;
    let cases = [
        ("issuers = []".to_owned(), "issuers: name at least one"),
        (
            format!("[[issuers]]\nissuer = \"http://example.com\"\naudience = \"flagd\"\n{rule}"),
            "issuers[0].issuer",
        ),
        (
            format!("[[issuers]]\n{issuer}\nclock_skew = \"10m\"\n{rule}"),
            "issuers[0].clock_skew: at most 5m",
        ),
        (
            format!("[[issuers]]\n{issuer}\nmax_lifetime = \"2h\"\n{rule}"),
            "issuers[0].max_lifetime: at most 1h",
        ),
        (
            format!("[[issuers]]\n{issuer}\n[[issuers.rules]]\nclaims = {{}}\nrole = \"admin\""),
            "issuers[0].rules[0].claims: match at least one claim",
        ),
        (
            format!(
                "[[issuers]]\n{issuer}\n[[issuers.rules]]\nclaims = {{ sub = \"x\" }}\nrole = \"sdk\""
            ),
            "issuers[0].rules[0].role",
        ),
        (
            format!(
                "[[issuers]]\n{issuer}\n[[issuers.rules]]\nclaims = {{ sub = \"[x\" }}\nrole = \"admin\""
            ),
            "issuers[0].rules[0].claims.sub",
        ),
        (
            format!(
                "[[issuers]]\n{issuer}\n[[issuers.rules]]\nclaims = {{ sub = \"x\" }}\nrole = \"admin\"\nenvironments = [\"bad name\"]"
            ),
            "issuers[0].rules[0].environments",
        ),
        (
            format!("[[issuers]]\n{issuer}\nrules = []"),
            "issuers[0].rules",
        ),
        (
            format!("[[issuers]]\n{issuer}\n{rule}\n[[issuers]]\n{issuer}\n{rule}"),
            "issuers[1].issuer",
        ),
        (
            format!(
                "[[issuers]]\n{issuer}\n[[issuers.rules]]\nclaims = {{ sub = \"*\", ref = \"?*\" }}\nrole = \"admin\""
            ),
            "issuers[0].rules[0].claims: every pattern matches anything",
        ),
        (
            format!(
                "[[issuers]]\n{issuer}\n[[issuers.rules]]\nclaims = {{ repository = \"{{acme/web,*}}\" }}\nrole = \"admin\""
            ),
            "every pattern matches anything",
        ),
        (
            format!(
                "[[issuers]]\n{issuer}\n[[issuers.rules]]\nclaims = {{ \"\" = \"x\" }}\nrole = \"admin\""
            ),
            "a claim name is empty",
        ),
        (
            format!(
                "[[issuers]]\nissuer = \"https://x.example/?a=1\"\naudience = \"flagd\"\n{rule}"
            ),
            "issuers[0].issuer: an issuer is a URL without",
        ),
    ];
    for (text, expected) in cases {
        let message = match toml::from_str::<OidcConfig>(&text) {
            Ok(config) => Oidc::new(config).unwrap_err(),
            Err(error) => error.to_string(),
        };
        assert!(message.contains(expected), "{text}\n=> {message}");
    }
}

#[test]
fn files_load_as_toml_or_json_with_the_field_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("oidc.json");
    std::fs::write(
        &json_path,
        r#"{"issuers": [{"issuer": "https://gitlab.example.com", "audience": "flagd",
            "rules": [{"claims": {"project_path": "acme/*"}, "role": "admin"}]}]}"#,
    )
    .unwrap();
    let oidc = Oidc::load(&json_path).unwrap();
    assert_eq!(oidc.issuer_names(), ["https://gitlab.example.com"]);
    let described = oidc.describe();
    assert_eq!(described["issuers"][0]["max_lifetime"], "3600s");
    assert_eq!(
        described["issuers"][0]["rules"][0]["claims"]["project_path"],
        "acme/*"
    );

    std::fs::write(
        &json_path,
        r#"{"issuers": [{"issuer": "https://x.example", "audience": "a", "rules": [], "jwks": "x"}]}"#,
    )
    .unwrap();
    let error = Oidc::load(&json_path).unwrap_err().to_string();
    assert!(
        error.contains("oidc.json") && error.contains("issuers[0]") && error.contains("jwks"),
        "{error}"
    );

    std::fs::write(
        &json_path,
        r#"{"issuers": [{"issuer": "https://x.example", "audience": "a",
            "rules": [{"claims": {"sub": "x"}, "role": "admin"}]}]} {"more": 1}"#,
    )
    .unwrap();
    let error = Oidc::load(&json_path).unwrap_err().to_string();
    assert!(error.contains("text after the configuration"), "{error}");

    let toml_path = dir.path().join("oidc.toml");
    std::fs::write(&toml_path, "[[issuers]]\nissuer = 3\n").unwrap();
    let error = Oidc::load(&toml_path).unwrap_err().to_string();
    assert!(
        error.contains("oidc.toml") && error.contains("issuer"),
        "{error}"
    );
    let error = Oidc::load(&dir.path().join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot read"), "{error}");
}

#[test]
fn only_jwts_take_the_oidc_path() {
    assert!(Oidc::looks_like_jwt("eyJh.eyJi.c2ln"));
    assert!(!Oidc::looks_like_jwt("flg_admin_0123"));
    assert!(!Oidc::looks_like_jwt("a.b"));
    assert!(!Oidc::looks_like_jwt("a.b.c d"));
}
