//! OIDC workload identity end to end: a local issuer started by the test (RSA and P-256 keys
//! generated here; discovery, JWKS and a GitHub-style token request endpoint on port 0), the real
//! server trusting it through `--oidc-config`, and `flagctl` as a CI job runs it.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use tests::{ServerProcess, http};

const ADMIN: &str = "flg_admin_oidc_end_to_end_token";
const REQUEST_TOKEN: &str = "github-request-token";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// A signing key and its public JWK.
struct Key {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// The public key's bytes (for the HMAC-with-a-public-key attack).
    public: Vec<u8>,
}

impl Key {
    fn rsa(kid: &str) -> Key {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let public = private.to_public_key();
        let der = private.to_pkcs1_der().unwrap();
        Key {
            kid: kid.to_owned(),
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                        "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be())}),
            public: public.n().to_bytes_be(),
        }
    }

    fn p256(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate().unwrap();
        let point = pair.public_key_raw().to_vec();
        Key {
            kid: kid.to_owned(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                        "x": b64(&point[1..33]), "y": b64(&point[33..])}),
            public: point,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// The issuer: discovery, a JWKS the test rotates, and the token request endpoint CI platforms
/// expose (`GET ?audience=` with the request token; answers `{"value": JWT}`), minting tokens for
/// `acme/web` on `main`.
struct Issuer {
    url: String,
    published: Arc<Mutex<Vec<Value>>>,
}

impl Issuer {
    async fn start(signer: Arc<Key>) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let published = Arc::new(Mutex::new(Vec::new()));
        let (keys, issuer, minting_issuer) = (published.clone(), url.clone(), url.clone());
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let issuer = issuer.clone();
                    async move {
                        axum::Json(json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}))
                    }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let keys = keys.lock().unwrap().clone();
                    async move { axum::Json(json!({ "keys": keys })) }
                }),
            )
            .route(
                "/token",
                axum::routing::get(
                    move |headers: axum::http::HeaderMap,
                          query: axum::extract::Query<Vec<(String, String)>>| {
                        let issuer = minting_issuer.clone();
                        let signer = signer.clone();
                        async move {
                            let authorized =
                                headers.get("authorization").and_then(|v| v.to_str().ok())
                                    == Some(&format!("Bearer {REQUEST_TOKEN}"));
                            let audience = query
                                .0
                                .iter()
                                .find(|(k, _)| k == "audience")
                                .map(|(_, v)| v.clone());
                            let has_version = query.0.iter().any(|(k, _)| k == "api-version");
                            match (authorized, audience, has_version) {
                                (true, Some(audience), true) => {
                                    let mut claims = claims(&issuer, "acme/web", "refs/heads/main");
                                    claims["aud"] = json!(audience);
                                    Ok(axum::Json(
                                        json!({"count": 1, "value": signer.sign(&claims)}),
                                    ))
                                }
                                _ => Err(axum::http::StatusCode::UNAUTHORIZED),
                            }
                        }
                    },
                ),
            );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Issuer { url, published }
    }

    fn publish(&self, keys: &[&Key]) {
        *self.published.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }
}

/// Claims as GitHub Actions issues them (the ones the rules look at), valid for 5 minutes.
fn claims(issuer: &str, repository: &str, git_ref: &str) -> Value {
    let now = now();
    json!({"iss": issuer, "aud": "flagd", "sub": format!("repo:{repository}:ref:{git_ref}"),
           "repository": repository, "ref": git_ref, "workflow": "deploy",
           "iat": now - 5, "nbf": now - 5, "exp": now + 300})
}

async fn whoami(base: &str, credential: &str) -> (u16, Value) {
    let response = http()
        .get(format!("{base}/api/v1/auth/whoami"))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `flagctl` with only these variables for its credential (no FLAGCTL_TOKEN).
fn flagctl(
    server: &ServerProcess,
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (i32, String, String) {
    tests::flagctl_env(server, None, dir, env, args)
}

/// The newest audit entry of a flag in `production`.
async fn last_change(base: &str, flag: &str) -> Value {
    let url = format!("{base}/api/v1/audit?environment=production&flag={flag}&limit=1");
    tests::get_json(&url, ADMIN).await["changes"][0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn workloads_authenticate_with_id_tokens_by_policy() {
    let rsa = Arc::new(Key::rsa("rsa-1"));
    let ec = Key::p256("ec-1");
    let rotated = Key::rsa("rsa-2");
    let issuer = Issuer::start(rsa.clone()).await;
    issuer.publish(&[&rsa, &ec]);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("oidc.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[issuers]]
issuer = "{issuer}"
audience = "flagd"
min_refresh_interval = "0s"

[[issuers.rules]]
name = "web deploys from main"
claims = {{ repository = "acme/web", ref = "refs/heads/main" }}
role = "admin"
environments = ["production"]

[[issuers.rules]]
name = "release branches"
claims = {{ repository = "acme/*", ref = "refs/heads/release/*" }}
role = "admin"
environments = ["staging"]
"#,
            issuer = issuer.url
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server =
        ServerProcess::start_with(&data, ADMIN, &["--oidc-config", config.to_str().unwrap()]);
    let base = server.base_url.clone();
    for name in ["production", "staging"] {
        let status = http()
            .post(format!("{base}/api/v1/environments"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 201);
    }

    // A valid token, either key type, maps to its rule's scope.
    let main = claims(&issuer.url, "acme/web", "refs/heads/main");
    for key in [&*rsa, &ec] {
        let (status, identity) = whoami(&base, &key.sign(&main)).await;
        assert_eq!(status, 200, "{identity}");
        assert_eq!(
            identity["actor"],
            "oidc:127.0.0.1:repo:acme/web:ref:refs/heads/main"
        );
        assert_eq!(identity["environments"], json!(["production"]));
        assert_eq!(identity["credential"]["kind"], "oidc");
        assert_eq!(identity["credential"]["rule"], "web deploys from main");
    }
    let release = rsa.sign(&claims(&issuer.url, "acme/api", "refs/heads/release/7.1"));
    assert_eq!(
        whoami(&base, &release).await.1["environments"],
        json!(["staging"])
    );

    // Each broken token: 401, and the answer never repeats it.
    let mut cases: Vec<(&str, String)> = Vec::new();
    let mut altered = |name: &'static str, change: &dyn Fn(&mut Value)| {
        let mut claims = main.clone();
        change(&mut claims);
        cases.push((name, rsa.sign(&claims)));
    };
    altered("wrong aud", &|c| c["aud"] = json!("someone-else"));
    altered("wrong iss", &|c| {
        c["iss"] = json!("https://token.evil.example")
    });
    altered("expired", &|c| {
        c["iat"] = json!(now() - 900);
        c["nbf"] = json!(now() - 900);
        c["exp"] = json!(now() - 600);
    });
    altered("not yet valid", &|c| c["nbf"] = json!(now() + 600));
    altered("lifetime over an hour", &|c| c["exp"] = json!(now() + 7200));
    altered("no sub", &|c| {
        c.as_object_mut().unwrap().remove("sub");
    });
    let valid = rsa.sign(&main);
    let parts: Vec<&str> = valid.split('.').collect();
    let mut tampered_claims = main.clone();
    tampered_claims["repository"] = json!("acme/admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(tampered_claims.to_string().as_bytes()),
        parts[2]
    );
    cases.push(("tampered payload", tampered));
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(main.to_string().as_bytes())
    );
    cases.push(("alg none", none));
    let mut hmac = Header::new(Algorithm::HS256);
    hmac.kid = Some("rsa-1".into());
    let confused =
        jsonwebtoken::encode(&hmac, &main, &EncodingKey::from_secret(&rsa.public)).unwrap();
    cases.push(("HS256 keyed with the public key", confused));
    let unknown_kid = rotated.sign(&main);
    cases.push(("unknown kid", unknown_kid.clone()));
    cases.push(("not a JWT", "eyJ.abc.def".to_owned()));
    for (case, token) in &cases {
        let (status, body) = whoami(&base, token).await;
        assert_eq!(status, 401, "{case}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("ID token"), "{case}: {message}");
        assert!(
            !message.contains(token.as_str()),
            "{case} echoes the token: {message}"
        );
    }
    // The unknown key is rotated in: the JWKS is fetched again and the token accepted.
    issuer.publish(&[&rsa, &ec, &rotated]);
    assert_eq!(whoami(&base, &unknown_kid).await.0, 200);

    // Valid, but no rule admits it: 403 naming issuer and subject.
    let stranger = rsa.sign(&claims(&issuer.url, "evil/web", "refs/heads/main"));
    let (status, body) = whoami(&base, &stranger).await;
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&issuer.url) && message.contains("repo:evil/web:ref:refs/heads/main"),
        "{message}"
    );
    assert!(!message.contains(&stranger));

    // Confined to production; writes there name the workload.
    let token = rsa.sign(&main);
    let put = |env: &str| {
        http()
            .put(format!("{base}/api/v1/environments/{env}/flags/new-checkout"))
            .bearer_auth(&token)
            .json(&json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}))
            .send()
    };
    assert_eq!(put("staging").await.unwrap().status().as_u16(), 403);
    let created: Value = put("production").await.unwrap().json().await.unwrap();
    assert_eq!(
        created["updatedBy"],
        "oidc:127.0.0.1:repo:acme/web:ref:refs/heads/main"
    );
    assert_eq!(
        last_change(&base, "new-checkout").await["actor"],
        "oidc:127.0.0.1:repo:acme/web:ref:refs/heads/main"
    );
    // Nor mint a token that would outlive it.
    let minted = http()
        .post(format!("{base}/api/v1/tokens"))
        .bearer_auth(&token)
        .json(&json!({"name": "persist", "role": "admin", "environments": ["production"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(minted.status().as_u16(), 403);
    // A workload cannot open a stream (its credential expires and cannot be revoked).
    let stream = http()
        .get(format!("{base}/api/v1/stream?environment=production"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 403);

    // The policies in force, for an admin of every environment; nothing secret in them.
    let policies = tests::get_json(&format!("{base}/api/v1/auth/oidc"), ADMIN).await;
    let listed = &policies["issuers"][0];
    assert_eq!(listed["issuer"], issuer.url);
    assert_eq!(listed["rules"][0]["environments"], json!(["production"]));
    assert_eq!(listed["jwks"]["key_ids"], json!(["rsa-1", "ec-1", "rsa-2"]));
    let (status, _) = {
        let response = http()
            .get(format!("{base}/api/v1/auth/oidc"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 403, "a scoped workload does not read the policies");

    // flagctl in CI: no stored secret, the ID token requested from the platform's endpoint.
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        work.join("flags.json"),
        json!({"flags": {"dark-mode": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}}}).to_string(),
    )
    .unwrap();
    let request_url = format!("{}/token?api-version=2.0", issuer.url);
    let ci: [(&str, &str); 3] = [
        ("FLAGCTL_OIDC_AUDIENCE", "flagd"),
        ("ACTIONS_ID_TOKEN_REQUEST_URL", &request_url),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", REQUEST_TOKEN),
    ];
    let work_dir = work.clone();
    let server_ref = &server;
    let run = move |args: &[&str]| flagctl(server_ref, &work, &ci, args);
    let (code, out, err) = run(&[
        "apply",
        "--file",
        "flags.json",
        "-e",
        "production",
        "-m",
        "deploy from CI",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["auth", "whoami"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("oidc:127.0.0.1:repo:acme/web:ref:refs/heads/main"),
        "{out}"
    );
    assert!(
        out.contains("production") && out.contains("web deploys from main"),
        "{out}"
    );
    // The policies, as an admin of every environment reads them with flagctl.
    let (code, out, err) = tests::flagctl(&server, ADMIN, &work_dir, &["auth", "oidc"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&issuer.url) && out.contains("web deploys from main"),
        "{out}"
    );
    assert!(
        out.contains("repository=acme/web") && out.contains("production"),
        "{out}"
    );
    let (code, out, _) = run(&["export", "-e", "production"]);
    assert_eq!(code, 0);
    assert!(out.contains("dark-mode"), "{out}");
    let (code, _, err) = run(&["apply", "--file", "flags.json", "-e", "staging"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("production") && err.contains("auth whoami"),
        "{err}"
    );
    let change = last_change(&base, "dark-mode").await;
    assert_eq!(
        change["actor"],
        "oidc:127.0.0.1:repo:acme/web:ref:refs/heads/main"
    );
    assert_eq!(change["message"], "deploy from CI");

    // A token file works the same; a wrong request token is a clear error, not a crash.
    let file = dir.path().join("id-token");
    std::fs::write(&file, format!("{}\n", rsa.sign(&main))).unwrap();
    let work = dir.path().join("work");
    let (code, out, err) = flagctl(
        &server,
        &work,
        &[("FLAGCTL_OIDC_TOKEN_FILE", file.to_str().unwrap())],
        &["auth", "whoami", "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["credential"]["kind"],
        "oidc"
    );
    let (code, _, err) = flagctl(
        &server,
        &work,
        &[
            ("FLAGCTL_OIDC_AUDIENCE", "flagd"),
            ("ACTIONS_ID_TOKEN_REQUEST_URL", &request_url),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "wrong"),
        ],
        &["auth", "whoami"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("ACTIONS_ID_TOKEN_REQUEST_URL") && err.contains("401"),
        "{err}"
    );
    let (code, _, err) = flagctl(
        &server,
        &work,
        &[("FLAGCTL_OIDC_AUDIENCE", "flagd")],
        &["auth", "whoami"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("id-token: write"), "{err}");
}

#[tokio::test]
async fn a_bad_oidc_config_stops_the_start_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("oidc.json");
    std::fs::write(
        &config,
        r#"{"issuers": [{"issuer": "https://token.actions.githubusercontent.com", "audience": "flagd",
            "rules": [{"claims": {}, "role": "admin"}]}]}"#,
    )
    .unwrap();
    let output = Command::new(tests::binary("flagd-server", "flagd-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--oidc-config")
        .arg(&config)
        .env("FLAGD_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("oidc.json") && stderr.contains("issuers[0].rules[0].claims"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the config is checked"
    );
}
