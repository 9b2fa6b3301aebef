//! OIDC workload identity: trusting the short-lived ID tokens CI platforms issue (GitHub
//! Actions, GitLab CI, Buildkite…) instead of stored admin tokens.
//!
//! The server reads trust policies from `--oidc-config` (TOML or JSON, shape in `docs/AUTH.md`):
//! per issuer its `issuer` URL, the `audience` its tokens must name, its keys (`jwks_uri`, or the
//! `jwks_uri` of the issuer's discovery document, OpenID Connect Discovery 1.0 §4), and rules
//! mapping claims to access. A bearer credential that is a JWT is verified here:
//! - the algorithm is RS256 or ES256 (never `none`, never an HMAC: the key comes from the
//!   issuer's JWKS, and its family must match the algorithm, RFC 8725 §3.1);
//! - the signature, with the key the header's `kid` names, from a JWKS cached per issuer and
//!   refetched when a `kid` is unknown (at most once per `min_refresh_interval`) or the cache is
//!   an hour old;
//! - `iss` (exactly the configured issuer) and `aud` (RFC 7519 §4.1);
//! - `exp`, `iat` (both required) and `nbf` against the server's clock with a bounded skew, and a
//!   lifetime (`exp - iat`) of at most `max_lifetime` (1 h at most);
//! - then the first rule whose every claim pattern matches grants its role and environments;
//!   none matching is a 403 naming the issuer and subject.
//!
//! Messages never repeat the token.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::DomainError;
use super::access::{Credential, Principal, normalise_scope};
use crate::store::Role;

/// The most skew an operator may allow between our clock and the issuer's.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// The longest-lived ID token accepted (the contract: short-lived credentials only).
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// A JWKS older than this is refetched on use (keys rotate; old ones are withdrawn).
const JWKS_MAX_AGE_SECS: i64 = 3600;
/// The largest discovery document or JWKS read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// How long fetching a discovery document or JWKS may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The `--oidc-config` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The trusted issuers.
    pub issuers: Vec<IssuerPolicy>,
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerPolicy {
    /// The `iss` its tokens carry, e.g. `https://token.actions.githubusercontent.com`.
    pub issuer: String,
    /// The `aud` its tokens must name (what the workload requests, e.g. `flagd`).
    pub audience: String,
    /// Where its keys are; default: the `jwks_uri` of `<issuer>/.well-known/openid-configuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Allowed difference between our clock and the issuer's (default `60s`, at most `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<String>,
    /// The longest token lifetime (`exp - iat`) accepted (default and at most `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<String>,
    /// The least time between two JWKS fetches caused by unknown key ids (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_refresh_interval: Option<String>,
    /// Claims to access, first match wins.
    pub rules: Vec<TrustRule>,
}

/// A rule: when every claim matches its pattern, the token gets `role` on `environments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRule {
    /// A name for listings and the principal (default: `rules[N]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Claim name to pattern: exact text, or a glob (`*` any run of characters, `/` included;
    /// `?` one character; `[abc]` a class). At least one.
    pub claims: BTreeMap<String, String>,
    /// `admin` (the only role a rule grants; applications read flags with sdk tokens).
    pub role: Role,
    /// The environments granted; absent for every environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<String>>,
}

/// Why the configuration was refused: the file, and the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    file: String,
    message: String,
}

/// The trusted issuers, with their key caches.
#[derive(Debug)]
pub struct Oidc {
    issuers: Vec<Issuer>,
    client: reqwest::Client,
    /// Outcomes of tokens from no trusted issuer (or not parsing far enough to name one).
    untrusted: Outcomes,
}

/// How many ID tokens were accepted, refused (401), forbidden (403: no rule) and unavailable
/// (503: keys unreachable), for `/metrics`.
#[derive(Debug, Default)]
struct Outcomes([AtomicU64; 4]);

impl Outcomes {
    const RESULTS: [&'static str; 4] = ["accepted", "refused", "forbidden", "unavailable"];

    /// Counts an authentication: accepted without an error, else by the error's kind.
    fn count(&self, error: Option<&DomainError>) {
        let index = match error {
            None => 0,
            Some(DomainError::Rejected {
                kind: super::Rejection::Forbidden,
                ..
            }) => 2,
            Some(DomainError::Rejected {
                kind: super::Rejection::Unavailable,
                ..
            }) => 3,
            Some(_) => 1,
        };
        self.0[index].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Issuer {
    policy: IssuerPolicy,
    host: String,
    clock_skew: i64,
    max_lifetime: i64,
    min_refresh_interval: i64,
    rules: Vec<Rule>,
    keys: std::sync::Mutex<KeyCache>,
    /// One fetch at a time per issuer; requests arriving meanwhile wait for its result.
    refresh: tokio::sync::Mutex<()>,
    outcomes: Outcomes,
    /// JWKS fetches that succeeded, and that failed.
    fetches: [AtomicU64; 2],
}

#[derive(Debug)]
struct Rule {
    name: String,
    claims: Vec<(String, globset::GlobMatcher)>,
    role: Role,
    environments: Option<Vec<String>>,
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<CachedKey>,
    /// The discovered `jwks_uri`, once fetched.
    jwks_uri: Option<String>,
    /// When the keys were last fetched successfully (unix seconds).
    fetched_at: Option<i64>,
    /// When a fetch was last attempted (for the rate limit).
    attempted_at: Option<i64>,
    /// Why the last fetch failed, if it did.
    last_error: Option<String>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("keys", &self.keys.len())
            .field("fetched_at", &self.fetched_at)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct CachedKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl Oidc {
    /// Reads and checks `--oidc-config`: TOML, or JSON (by the `.json` extension, or content
    /// starting with `{`).
    pub fn load(path: &Path) -> Result<Oidc, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: file.clone(),
            message: format!("cannot read the OIDC configuration: {error}"),
        })?;
        let json =
            path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
        let config: OidcConfig = if json {
            let mut deserializer = serde_json::Deserializer::from_str(&text);
            let config = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                ConfigError {
                    file: file.clone(),
                    message: format!("{}: {}", error.path(), error.inner()),
                }
            })?;
            // Anything after the object is a mistake, not something to ignore.
            deserializer.end().map_err(|error| ConfigError {
                file: file.clone(),
                message: format!("text after the configuration: {error}"),
            })?;
            config
        } else {
            toml::from_str(&text).map_err(|error| ConfigError {
                file: file.clone(),
                message: error.to_string().trim().to_owned(),
            })?
        };
        Oidc::new(config).map_err(|message| ConfigError { file, message })
    }

    /// Checks a configuration (each problem names its field, `issuers[0].rules[1].claims`).
    pub fn new(config: OidcConfig) -> Result<Oidc, String> {
        if config.issuers.is_empty() {
            return Err("issuers: name at least one trusted issuer".to_owned());
        }
        let mut issuers: Vec<Issuer> = Vec::new();
        for (index, policy) in config.issuers.into_iter().enumerate() {
            let at = format!("issuers[{index}]");
            let issuer = Issuer::new(policy, &at)?;
            if issuers
                .iter()
                .any(|other| other.policy.issuer == issuer.policy.issuer)
            {
                return Err(format!(
                    "{at}.issuer: {:?} is listed twice; put its rules together",
                    issuer.policy.issuer
                ));
            }
            issuers.push(issuer);
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            // Every hop is held to the rule the configured URLs are: a redirect to plain http
            // would let anyone on the path hand us signing keys.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= 3 {
                    attempt.error("more than 3 redirects")
                } else if let Err(why) = check_url(attempt.url().as_str()) {
                    attempt.error(format!("redirected to {why}"))
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|error| format!("cannot build the HTTP client for JWKS: {error}"))?;
        Ok(Oidc {
            issuers,
            client,
            untrusted: Outcomes::default(),
        })
    }

    /// Fetches every issuer's keys once (at start): a mistyped issuer or an unreachable JWKS shows
    /// in the log and in `GET /api/v1/auth/oidc` before the first pipeline runs.
    pub async fn prefetch(&self, now: i64) {
        for issuer in &self.issuers {
            let _fetching = issuer.refresh.lock().await;
            if issuer.refresh(&self.client, now).await.is_ok() {
                tracing::info!(issuer = %issuer.policy.issuer, keys = issuer.lock_keys().keys.len(), "fetched the OIDC issuer's keys");
            }
        }
    }

    /// The issuers trusted, for the start-up log.
    pub fn issuer_names(&self) -> Vec<&str> {
        self.issuers
            .iter()
            .map(|issuer| issuer.policy.issuer.as_str())
            .collect()
    }

    /// The policies in force and each issuer's key cache, for `GET /api/v1/auth/oidc` (there
    /// are no secrets in them: keys are public).
    pub fn describe(&self) -> Value {
        let issuers: Vec<Value> = self
            .issuers
            .iter()
            .map(|issuer| {
                let mut policy = serde_json::to_value(&issuer.policy).unwrap_or_default();
                let cache = issuer.lock_keys();
                policy["clock_skew"] = format!("{}s", issuer.clock_skew).into();
                policy["max_lifetime"] = format!("{}s", issuer.max_lifetime).into();
                policy["min_refresh_interval"] = format!("{}s", issuer.min_refresh_interval).into();
                policy["jwks"] = serde_json::json!({
                    "uri": issuer.policy.jwks_uri.clone().or_else(|| cache.jwks_uri.clone()),
                    "fetched_at": cache.fetched_at,
                    "key_ids": cache.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
                    "last_error": cache.last_error,
                });
                policy
            })
            .collect();
        serde_json::json!({ "issuers": issuers })
    }

    /// `flagd_oidc_authentications_total{issuer, result}` and
    /// `flagd_oidc_jwks_fetches_total{issuer, result}`, appended to `/metrics`. Tokens naming no
    /// trusted issuer count under `issuer="untrusted"` (never the claimed value: no label an
    /// attacker chooses).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let label = crate::metrics::label;
        out.push_str("# HELP flagd_oidc_authentications_total OIDC ID tokens presented, by issuer and result: accepted, refused (401), forbidden (403, no rule), unavailable (503, keys unreachable).\n");
        out.push_str("# TYPE flagd_oidc_authentications_total counter\n");
        let rows = self
            .issuers
            .iter()
            .map(|issuer| (label(&issuer.policy.issuer), &issuer.outcomes))
            .chain(std::iter::once(("untrusted".to_owned(), &self.untrusted)));
        for (issuer, outcomes) in rows {
            for (result, count) in Outcomes::RESULTS.iter().zip(&outcomes.0) {
                let _ = writeln!(
                    out,
                    "flagd_oidc_authentications_total{{issuer=\"{issuer}\",result=\"{result}\"}} {}",
                    count.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP flagd_oidc_jwks_fetches_total Fetches of trusted issuers' keys (discovery and JWKS), by result.\n");
        out.push_str("# TYPE flagd_oidc_jwks_fetches_total counter\n");
        for issuer in &self.issuers {
            for (result, count) in ["ok", "error"].iter().zip(&issuer.fetches) {
                let _ = writeln!(
                    out,
                    "flagd_oidc_jwks_fetches_total{{issuer=\"{}\",result=\"{result}\"}} {}",
                    label(&issuer.policy.issuer),
                    count.load(Ordering::Relaxed)
                );
            }
        }
    }

    /// Whether a bearer credential is a JWT (three base64url parts) rather than a token.
    pub fn looks_like_jwt(credential: &str) -> bool {
        credential.split('.').count() == 3
            && credential
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    /// Verifies an ID token at `now` (unix seconds) and maps it to a principal: 401 when it is
    /// not a valid token of a trusted issuer, 403 when no rule admits it, 503 when the issuer's
    /// keys cannot be fetched.
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<Principal, DomainError> {
        let (issuer, algorithm, kid) = match self.issuer_of(token) {
            Ok(found) => found,
            Err(error) => {
                self.untrusted.count(Some(&error));
                return Err(error);
            }
        };
        let result = self
            .verify(issuer, algorithm, kid.as_deref(), token, now)
            .await;
        issuer.outcomes.count(result.as_ref().err());
        result
    }

    /// The trusted issuer an ID token claims, its algorithm and key id (nothing verified yet).
    fn issuer_of(&self, token: &str) -> Result<(&Issuer, Algorithm, Option<String>), DomainError> {
        let (header, unverified) = split(token)?;
        let algorithm = match header.get("alg").and_then(Value::as_str) {
            Some("RS256") => Algorithm::RS256,
            Some("ES256") => Algorithm::ES256,
            Some(other) => {
                return Err(unauthorized(format!(
                    "algorithm {:?} is not accepted: RS256 or ES256 only",
                    printable(other)
                )));
            }
            None => return Err(unauthorized("its header names no algorithm (alg)")),
        };
        // RFC 7515 §4.1.11: extensions a recipient does not understand make the token invalid;
        // we understand none.
        if header.contains_key("crit") {
            return Err(unauthorized(
                "its header requires extensions (crit) this server does not support",
            ));
        }
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(unauthorized("its key id (kid) is not a string")),
        };
        let claimed_issuer = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| unauthorized("it has no issuer (iss) claim"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|issuer| issuer.policy.issuer == claimed_issuer)
            .ok_or_else(|| {
                unauthorized(format!(
                    "issuer {:?} is not trusted by this server",
                    printable(claimed_issuer)
                ))
            })?;
        Ok((issuer, algorithm, kid))
    }

    /// Verifies a token of `issuer` and maps it to a principal.
    async fn verify(
        &self,
        issuer: &Issuer,
        algorithm: Algorithm,
        kid: Option<&str>,
        token: &str,
        now: i64,
    ) -> Result<Principal, DomainError> {
        let key = issuer.key(&self.client, kid, algorithm, now).await?;

        let mut validation = Validation::new(algorithm);
        // Times are checked below against the server's clock (one clock for everything).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.set_issuer(&[&issuer.policy.issuer]);
        validation.set_audience(&[&issuer.policy.audience]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|error| {
                use jsonwebtoken::errors::ErrorKind;
                unauthorized(match error.kind() {
                    ErrorKind::InvalidSignature => {
                        "its signature does not verify with the issuer's key".to_owned()
                    }
                    ErrorKind::InvalidAudience => {
                        format!("its audience (aud) is not {:?}", issuer.policy.audience)
                    }
                    ErrorKind::MissingRequiredClaim(claim) => format!("it has no {claim} claim"),
                    ErrorKind::InvalidAlgorithm => {
                        "its algorithm does not match the issuer's key".to_owned()
                    }
                    // No library internals, and nothing of the token, in the answer.
                    _ => "its header or claims do not decode as a JWT".to_owned(),
                })
            })?
            .claims;
        // jsonwebtoken checks `aud` only when present and well-formed: a token must carry ours,
        // as a string or in an array of strings (RFC 7519 §4.1.3).
        let audience = issuer.policy.audience.as_str();
        let carries_audience = match claims.get("aud") {
            Some(Value::String(aud)) => aud == audience,
            Some(Value::Array(auds)) => {
                auds.iter().all(Value::is_string) && auds.iter().any(|aud| aud == audience)
            }
            _ => false,
        };
        if !carries_audience {
            return Err(unauthorized(format!(
                "its audience (aud) is not {audience:?}"
            )));
        }
        issuer.check_times(&claims, now)?;
        let subject = match claims.get("sub") {
            Some(Value::String(sub))
                if !sub.is_empty() && sub.len() <= 512 && super::access::is_plain_text(sub) =>
            {
                sub.clone()
            }
            _ => {
                return Err(unauthorized(
                    "its subject (sub) is missing or not printable text",
                ));
            }
        };
        let expires_at = claim_time(&claims, "exp")?.unwrap_or(now);
        let rule = issuer
            .rules
            .iter()
            .find(|rule| rule.admits(&claims))
            .ok_or_else(|| {
                DomainError::forbidden(format!(
                    "no trust rule of issuer {:?} admits subject {subject:?} ({})",
                    issuer.policy.issuer,
                    issuer.ruled_claims(&claims)
                ))
            })?;
        Ok(Principal {
            actor: format!("oidc:{}:{subject}", issuer.host),
            role: rule.role,
            environments: rule.environments.clone(),
            credential: Credential::Oidc {
                issuer: issuer.policy.issuer.clone(),
                subject,
                expires_at,
                rule: rule.name.clone(),
            },
        })
    }
}

impl Issuer {
    fn new(policy: IssuerPolicy, at: &str) -> Result<Issuer, String> {
        let issuer_url = check_url(&policy.issuer).map_err(|e| format!("{at}.issuer: {e}"))?;
        if issuer_url.query().is_some()
            || issuer_url.fragment().is_some()
            || !issuer_url.username().is_empty()
            || issuer_url.password().is_some()
        {
            return Err(format!(
                "{at}.issuer: an issuer is a URL without user, query or fragment (OpenID Connect Discovery 1.0 §2)"
            ));
        }
        if let Some(uri) = &policy.jwks_uri {
            check_url(uri).map_err(|e| format!("{at}.jwks_uri: {e}"))?;
        }
        if policy.audience.trim().is_empty() {
            return Err(format!(
                "{at}.audience: name the audience its tokens are requested for (e.g. \"flagd\")"
            ));
        }
        let duration = |value: &Option<String>, field: &str, default: Duration, max: Duration| {
            let parsed = match value {
                None => default,
                Some(text) => {
                    crate::units::parse_duration(text).map_err(|e| format!("{at}.{field}: {e}"))?
                }
            };
            if parsed > max {
                return Err(format!(
                    "{at}.{field}: at most {}",
                    humantime::format_duration(max)
                ));
            }
            Ok(i64::try_from(parsed.as_secs()).unwrap_or(i64::MAX))
        };
        let clock_skew = duration(
            &policy.clock_skew,
            "clock_skew",
            Duration::from_secs(60),
            MAX_CLOCK_SKEW,
        )?;
        let max_lifetime = duration(
            &policy.max_lifetime,
            "max_lifetime",
            MAX_LIFETIME,
            MAX_LIFETIME,
        )?;
        if max_lifetime == 0 {
            return Err(format!("{at}.max_lifetime: must be at least 1s"));
        }
        let min_refresh_interval = duration(
            &policy.min_refresh_interval,
            "min_refresh_interval",
            Duration::from_secs(30),
            Duration::from_secs(24 * 3600),
        )?;
        if policy.rules.is_empty() {
            return Err(format!(
                "{at}.rules: add at least one rule, or the issuer grants nothing"
            ));
        }
        let rules = policy
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| Rule::new(rule, &format!("{at}.rules[{index}]"), index))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Issuer {
            host: issuer_url.host_str().unwrap_or_default().to_owned(),
            policy,
            clock_skew,
            max_lifetime,
            min_refresh_interval,
            rules,
            keys: std::sync::Mutex::new(KeyCache::default()),
            refresh: tokio::sync::Mutex::new(()),
            outcomes: Outcomes::default(),
            fetches: Default::default(),
        })
    }

    fn lock_keys(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        // The cache holds no invariant a panic could break halfway: recover from poisoning.
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached key for `kid` and `algorithm`, if the cache is fresh enough (or `stale_ok`).
    fn cached(&self, kid: Option<&str>, algorithm: Algorithm, now: i64, stale_ok: bool) -> Found {
        let cache = self.lock_keys();
        let Some(fetched_at) = cache.fetched_at else {
            return Found::Nothing;
        };
        if !stale_ok && now.saturating_sub(fetched_at) >= JWKS_MAX_AGE_SECS {
            return Found::Nothing;
        }
        let candidates: Vec<&CachedKey> = cache
            .keys
            .iter()
            .filter(|key| key.algorithm == algorithm)
            .filter(|key| kid.is_none() || key.kid.as_deref() == kid)
            .collect();
        match (kid, candidates.as_slice()) {
            (_, [key]) => Found::Key(key.key.clone()),
            (None, []) => Found::Missing(format!(
                "the issuer has no {algorithm:?} key and the token names none (kid)"
            )),
            (None, _) => Found::Missing(format!(
                "the token names no key (kid) and the issuer has {} {algorithm:?} keys",
                candidates.len()
            )),
            (Some(kid), _) => Found::Missing(format!(
                "key {:?} is not among the issuer's {algorithm:?} keys",
                printable(kid)
            )),
        }
    }

    /// The key to verify with: from the cache, else after (re)fetching the JWKS, at most once
    /// per `min_refresh_interval` when a key id is unknown.
    async fn key(
        &self,
        client: &reqwest::Client,
        kid: Option<&str>,
        algorithm: Algorithm,
        now: i64,
    ) -> Result<DecodingKey, DomainError> {
        if let Found::Key(key) = self.cached(kid, algorithm, now, false) {
            return Ok(key);
        }
        // Waiting behind a slow fetch is bounded like the fetch itself.
        let Ok(_fetching) = tokio::time::timeout(FETCH_TIMEOUT, self.refresh.lock()).await else {
            return Err(self.unavailable("are still being fetched; retry shortly".to_owned()));
        };
        // Another request may have fetched while this one waited.
        if let Found::Key(key) = self.cached(kid, algorithm, now, false) {
            return Ok(key);
        }
        let last_attempt = self.lock_keys().attempted_at;
        if let Some(at) = last_attempt
            && now.saturating_sub(at) < self.min_refresh_interval
        {
            let last_failed = self.lock_keys().last_error.clone();
            let retry_in = self.min_refresh_interval - now.saturating_sub(at);
            return match self.cached(kid, algorithm, now, true) {
                Found::Key(key) => Ok(key),
                Found::Missing(why) if last_failed.is_none() => Err(unauthorized(format!(
                    "{why} (its keys were fetched {}s ago; they are fetched again at most every {}s)",
                    now.saturating_sub(at),
                    self.min_refresh_interval
                ))),
                // The last fetch failed: the key may well exist; the issuer is what is missing.
                Found::Missing(_) | Found::Nothing => Err(self.unavailable(format!(
                    "could not be fetched{}; retry in {retry_in}s",
                    last_failed.map(|e| format!(" ({e})")).unwrap_or_default()
                ))),
            };
        }
        if let Err(error) = self.refresh(client, now).await {
            // Keys fetched earlier still verify while the issuer is unreachable.
            if let Found::Key(key) = self.cached(kid, algorithm, now, true) {
                return Ok(key);
            }
            return Err(self.unavailable(format!("could not be fetched: {error}")));
        }
        match self.cached(kid, algorithm, now, false) {
            Found::Key(key) => Ok(key),
            Found::Missing(why) => Err(unauthorized(why)),
            Found::Nothing => Err(unauthorized("the issuer's JWKS has no usable key")),
        }
    }

    /// A 503: "the keys of issuer … `what`".
    fn unavailable(&self, what: String) -> DomainError {
        DomainError::rejected(
            super::Rejection::Unavailable,
            format!("the keys of issuer {:?} {what}", self.policy.issuer),
        )
    }

    /// Fetches the keys now and caches them (the caller holds `refresh`); the failure is also
    /// kept for `describe`, logged and counted.
    async fn refresh(&self, client: &reqwest::Client, now: i64) -> Result<(), String> {
        self.lock_keys().attempted_at = Some(now);
        // Discovery and JWKS together within one timeout.
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch(client))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())));
        self.fetches[usize::from(fetched.is_err())].fetch_add(1, Ordering::Relaxed);
        match fetched {
            Ok((keys, jwks_uri)) => {
                let mut cache = self.lock_keys();
                cache.keys = keys;
                cache.jwks_uri = Some(jwks_uri);
                cache.fetched_at = Some(now);
                cache.last_error = None;
                Ok(())
            }
            Err(error) => {
                tracing::warn!(issuer = %self.policy.issuer, %error, "cannot fetch the issuer's JWKS");
                self.lock_keys().last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Fetches the JWKS (through discovery when no `jwks_uri` is configured); returns the usable
    /// keys (RSA for RS256, P-256 for ES256; encryption keys and others skipped) and the URI.
    async fn fetch(&self, client: &reqwest::Client) -> Result<(Vec<CachedKey>, String), String> {
        let jwks_uri = match &self.policy.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.policy.issuer.trim_end_matches('/')
                );
                let discovery = get_json(client, &url).await?;
                // OpenID Connect Discovery 1.0 §4.3: the document's issuer is exactly ours.
                if discovery.get("issuer").and_then(Value::as_str) != Some(&self.policy.issuer) {
                    return Err(format!(
                        "the discovery document at {url} names another issuer"
                    ));
                }
                let uri = discovery
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("the discovery document at {url} has no jwks_uri"))?;
                check_url(uri).map_err(|e| format!("jwks_uri of the discovery document: {e}"))?;
                uri.to_owned()
            }
        };
        let jwks = get_json(client, &jwks_uri).await?;
        let listed = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{jwks_uri} is not a JWKS (no keys array)"))?;
        let keys = listed
            .iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value.clone()).ok())
            .filter_map(|jwk| usable_key(&jwk))
            .collect();
        Ok((keys, jwks_uri))
    }

    /// The token's values of the claims the rules look at, for the "no rule" message (claims
    /// describe the workload; the token itself is never repeated).
    fn ruled_claims(&self, claims: &Object) -> String {
        let names: std::collections::BTreeSet<&str> = self
            .rules
            .iter()
            .flat_map(|rule| rule.claims.iter().map(|(name, _)| name.as_str()))
            .collect();
        let shown: Vec<String> = names
            .into_iter()
            .map(|name| match claims.get(name) {
                Some(Value::String(text)) => format!("{name}={:?}", printable(text)),
                Some(value @ (Value::Number(_) | Value::Bool(_))) => format!("{name}={value}"),
                Some(_) => format!("{name}=(not text)"),
                None => format!("{name} absent"),
            })
            .collect();
        format!("its claims: {}", shown.join(", "))
    }

    /// `exp` and `iat` present; not expired, not before `nbf`, not issued in the future, and a
    /// lifetime within `max_lifetime`; each with `clock_skew` of tolerance.
    fn check_times(&self, claims: &Map<String, Value>, now: i64) -> Result<(), DomainError> {
        let exp = claim_time(claims, "exp")?.ok_or_else(|| unauthorized("it has no exp claim"))?;
        let iat = claim_time(claims, "iat")?.ok_or_else(|| unauthorized("it has no iat claim"))?;
        let skew = self.clock_skew;
        if now > exp.saturating_add(skew) {
            return Err(unauthorized(format!(
                "it expired {}s ago",
                now.saturating_sub(exp)
            )));
        }
        if let Some(nbf) = claim_time(claims, "nbf")?
            && nbf > now.saturating_add(skew)
        {
            return Err(unauthorized(format!(
                "it is not valid for another {}s (nbf)",
                nbf.saturating_sub(now)
            )));
        }
        if iat > now.saturating_add(skew) {
            return Err(unauthorized("it was issued in the future (iat)"));
        }
        let lifetime = exp.saturating_sub(iat);
        if lifetime <= 0 || lifetime > self.max_lifetime {
            return Err(unauthorized(format!(
                "its lifetime (exp - iat) is {lifetime}s; this server accepts 1s to {}s",
                self.max_lifetime
            )));
        }
        Ok(())
    }
}

impl Rule {
    fn new(rule: &TrustRule, at: &str, index: usize) -> Result<Rule, String> {
        if rule.claims.is_empty() {
            return Err(format!(
                "{at}.claims: match at least one claim (a rule without claims would admit every workload of the issuer)"
            ));
        }
        if rule.claims.keys().any(|claim| claim.is_empty()) {
            return Err(format!("{at}.claims: a claim name is empty"));
        }
        // `*`, `?*`, `{acme/web,*}`: a pattern that matches a value nobody would choose matches
        // every value.
        let probe = "flagd-probe/x7Qz:9";
        let anything = |pattern: &str| {
            globset::GlobBuilder::new(pattern)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .is_ok_and(|glob| glob.compile_matcher().is_match(probe))
        };
        if rule.claims.values().all(|pattern| anything(pattern)) {
            return Err(format!(
                "{at}.claims: every pattern matches anything; name the repository, owner or subject the rule is for"
            ));
        }
        if rule.role != Role::Admin {
            return Err(format!(
                "{at}.role: rules grant \"admin\" (limit it with environments); applications read flags with sdk tokens"
            ));
        }
        let claims = rule
            .claims
            .iter()
            .map(|(claim, pattern)| {
                globset::GlobBuilder::new(pattern)
                    .literal_separator(false)
                    .backslash_escape(true)
                    .build()
                    .map(|glob| (claim.clone(), glob.compile_matcher()))
                    .map_err(|e| format!("{at}.claims.{claim}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let environments = rule
            .environments
            .clone()
            .map(|names| normalise_scope(names, "environments"))
            .transpose()
            .map_err(|e| format!("{at}.environments: {e}"))?;
        if let Some(name) = &rule.name
            && (name.is_empty() || !super::access::is_plain_text(name))
        {
            return Err(format!("{at}.name: printable text, please"));
        }
        Ok(Rule {
            name: rule
                .name
                .clone()
                .unwrap_or_else(|| format!("rules[{index}]")),
            claims,
            role: rule.role,
            environments,
        })
    }

    /// Every pattern matches its claim: a string, a number or boolean (as written in JSON), or
    /// any element of an array of those.
    fn admits(&self, claims: &Map<String, Value>) -> bool {
        self.claims.iter().all(|(claim, pattern)| {
            let matches = |value: &Value| match value {
                Value::String(text) => pattern.is_match(text),
                Value::Number(_) | Value::Bool(_) => pattern.is_match(value.to_string()),
                _ => false,
            };
            match claims.get(claim) {
                Some(Value::Array(values)) => values.iter().any(matches),
                Some(value) => matches(value),
                None => false,
            }
        })
    }
}

enum Found {
    Key(DecodingKey),
    Missing(String),
    Nothing,
}

/// A JSON object: a JWT's header or its claims.
type Object = Map<String, Value>;

/// The header and the unverified claims of a compact JWT.
fn split(token: &str) -> Result<(Object, Object), DomainError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unauthorized("it is not a compact JWT"));
    };
    let decode = |part: &str, what: &str| -> Result<Object, DomainError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| unauthorized(format!("its {what} is not base64url")))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| unauthorized(format!("its {what} is not a JSON object")))
    };
    Ok((decode(header, "header")?, decode(payload, "payload")?))
}

/// A NumericDate claim (RFC 7519 §2: seconds, possibly fractional), if present.
fn claim_time(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, DomainError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => number
            .as_i64()
            .or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    // Within ±1e15 the conversion is exact enough for seconds.
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or_else(|| unauthorized(format!("its {name} claim is not a time"))),
        Some(_) => Err(unauthorized(format!("its {name} claim is not a number"))),
    }
}

/// A key we verify with: RSA for RS256, EC P-256 for ES256; never an `enc` key or a symmetric one.
fn usable_key(jwk: &Jwk) -> Option<CachedKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    // A key that states its algorithm is used for that one only.
    if let Some(stated) = &jwk.common.key_algorithm
        && format!("{stated:?}") != format!("{algorithm:?}")
    {
        return None;
    }
    Some(CachedKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// An issuer or JWKS URL: https, or http to this machine (for tests and sidecars).
fn check_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(host)) => host == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!(
            "{text:?} must be an https:// URL (http:// only to a loopback address)"
        )),
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", crate::outbound::chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", response.status()));
    }
    let body = crate::outbound::read_capped(response, url, MAX_DOCUMENT_BYTES).await?;
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
}

fn unauthorized(why: impl std::fmt::Display) -> DomainError {
    DomainError::unauthorized(format!("the ID token was refused: {why}"))
}

/// Attacker-chosen text in a message: at most 200 characters, no control characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests;
