//! Authentication cost per request: a token (hash lookup) against an OIDC ID token (RS256 and
//! ES256 signature verification, claims, rule matching), with the issuer's keys cached. The
//! issuer runs in-process on port 0, as in the OIDC tests.
//!
//! Run: `cargo bench -p benches --bench auth`

use std::hint::black_box;

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use flagd_server::domain::oidc::{Oidc, OidcConfig};
use flagd_server::domain::tokens::{TokenCache, generate_secret, hash_secret};
use flagd_server::store::{Role, TokenRecord};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};

const NOW: i64 = 1_800_000_000;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
    let ec = rcgen::KeyPair::generate().expect("ec key");
    let point = ec.public_key_raw().to_vec();
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "r", "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be())},
        {"kty": "EC", "crv": "P-256", "kid": "e", "x": b64(&point[1..33]), "y": b64(&point[33..])},
    ]});
    let url = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let router = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    });
    let config: OidcConfig = serde_json::from_value(json!({"issuers": [{
        "issuer": url, "audience": "flagd", "jwks_uri": format!("{url}/jwks"),
        "rules": [
            {"claims": {"repository": "acme/api", "ref": "refs/heads/main"}, "role": "admin", "environments": ["staging"]},
            {"claims": {"repository": "acme/web", "ref": "refs/heads/*"}, "role": "admin", "environments": ["production"]},
        ]}]}))
    .expect("config");
    let oidc = Oidc::new(config).expect("oidc");
    let claims: Value = json!({"iss": url, "aud": "flagd", "sub": "repo:acme/web:ref:refs/heads/main",
        "repository": "acme/web", "ref": "refs/heads/main", "iat": NOW - 5, "exp": NOW + 300});
    let sign = |algorithm, kid: &str, key: &EncodingKey| {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, key).expect("sign")
    };
    let rs256 = sign(
        Algorithm::RS256,
        "r",
        &EncodingKey::from_rsa_der(rsa.to_pkcs1_der().expect("der").as_bytes()),
    );
    let es256 = sign(
        Algorithm::ES256,
        "e",
        &EncodingKey::from_ec_der(&ec.serialize_der()),
    );
    // Warm the key cache.
    runtime
        .block_on(oidc.authenticate(&rs256, NOW))
        .expect("a valid token");

    let tokens = TokenCache::default();
    let secret = generate_secret(Role::Admin);
    tokens.insert(TokenRecord {
        id: "tok_1".into(),
        name: "ops".into(),
        role: Role::Admin,
        environment: None,
        environments: None,
        hash: hash_secret(&secret),
        created_at: 0,
        revoked_at: None,
    });

    let mut group = c.benchmark_group("authenticate");
    group.bench_function("token", |b| {
        b.iter(|| black_box(tokens.authenticate(black_box(&secret))));
    });
    group.bench_function("oidc_rs256", |b| {
        b.iter(|| black_box(runtime.block_on(oidc.authenticate(black_box(&rs256), NOW))));
    });
    group.bench_function("oidc_es256", |b| {
        b.iter(|| black_box(runtime.block_on(oidc.authenticate(black_box(&es256), NOW))));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
