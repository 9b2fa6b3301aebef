//! Who is asking, and what they may touch: the [`Principal`] behind a request (a token, or a
//! workload's OIDC ID token, see `oidc.rs`) and its environment scope.
//!
//! The rules, documented in `docs/AUTH.md`:
//! - an sdk token reads its one environment;
//! - an admin token, or an OIDC trust rule, covers every environment or a list of them
//!   (`environments`); a scoped admin is refused (403) every route of another environment;
//! - among the global routes, a scoped admin lists only its environments, creates (and deletes)
//!   only environments in its scope, reads only its environments' audit entries, and sees,
//!   creates and revokes only tokens within its scope (an sdk token of one of its environments,
//!   or an admin token scoped to a subset of its environments).

pub use flag_protocol::auth::Credential;

use super::DomainError;
use crate::store::{Role, TokenRecord};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The name recorded in the audit log and `updatedBy`: a token's name, or
    /// `oidc:<issuer host>:<sub>`.
    pub actor: String,
    /// What it may do.
    pub role: Role,
    /// The environments it may use, sorted; `None` for every environment.
    pub environments: Option<Vec<String>>,
    /// How it authenticated.
    pub credential: Credential,
}

impl Principal {
    /// The principal of a token.
    /// The principal of a token (taken by value: authentication already holds a copy, and
    /// this runs on every OFREP request, so its fields move rather than clone).
    pub fn from_token(token: TokenRecord) -> Principal {
        let environments = match token.role {
            Role::Sdk => Some(token.environment.into_iter().collect()),
            Role::Admin => token.environments,
        };
        Principal {
            actor: token.name.clone(),
            role: token.role,
            environments,
            credential: Credential::Token {
                id: token.id,
                name: token.name,
            },
        }
    }

    /// What `GET /api/v1/auth/whoami` answers.
    pub fn identity(&self) -> flag_protocol::auth::Identity {
        flag_protocol::auth::Identity {
            actor: self.actor.clone(),
            role: self.role.as_str().to_owned(),
            environments: self.environments.clone(),
            credential: self.credential.clone(),
        }
    }

    /// The token's id, when a token authenticated it.
    pub fn token_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::Token { id, .. } => Some(id),
            Credential::Oidc { .. } => None,
        }
    }

    /// Whether it covers every environment.
    pub fn is_unscoped(&self) -> bool {
        self.environments.is_none()
    }

    /// Whether it may use `environment`.
    pub fn may_use(&self, environment: &str) -> bool {
        self.environments
            .as_ref()
            .is_none_or(|names| names.iter().any(|name| name == environment))
    }

    /// Whether everything a scope (`None` = every environment) covers is within its own.
    pub fn covers(&self, scope: Option<&[String]>) -> bool {
        match (&self.environments, scope) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(names)) => names.iter().all(|name| self.may_use(name)),
        }
    }

    /// Whether it covers what this token may use.
    pub fn covers_token(&self, token: &TokenRecord) -> bool {
        match token.role {
            Role::Sdk => token
                .environment
                .as_deref()
                .is_some_and(|env| self.may_use(env)),
            Role::Admin => self.covers(token.environments.as_deref()),
        }
    }

    /// Refuses unless it may use `environment` (403, naming its scope).
    pub fn check_environment(&self, environment: &str) -> Result<(), DomainError> {
        if self.may_use(environment) {
            return Ok(());
        }
        Err(DomainError::forbidden(format!(
            "{} is confined to {}; it may not use environment {environment:?}",
            self.described(),
            self.scope_text()
        )))
    }

    /// Refuses unless it covers every environment (403): for what only such an admin may do.
    pub fn check_unscoped(&self, what: &str) -> Result<(), DomainError> {
        if self.is_unscoped() {
            return Ok(());
        }
        Err(DomainError::forbidden(format!(
            "{} is confined to {}; {what} needs an admin for every environment",
            self.described(),
            self.scope_text()
        )))
    }

    /// "token \"ci\"" or "workload oidc:host:sub", for messages.
    pub fn described(&self) -> String {
        match &self.credential {
            Credential::Token { name, .. } => format!("token {name:?}"),
            Credential::Oidc { .. } => format!("workload {}", self.actor),
        }
    }

    /// "environments [\"staging\"]", or "every environment".
    pub fn scope_text(&self) -> String {
        match &self.environments {
            None => "every environment".to_owned(),
            Some(names) => format!("environments {names:?}"),
        }
    }
}

/// Text that reads as what it is: no control characters, and none of the invisible or
/// direction-changing format characters (zero-width spaces, bidi overrides, line separators) that
/// make one name look like another in the audit log.
pub fn is_plain_text(text: &str) -> bool {
    !text.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    })
}

/// Prefixes of the actors the server writes itself (`git:<sha>` for Git syncs, `oidc:…` for
/// workloads): no token may be named so.
pub const RESERVED_ACTOR_PREFIXES: [&str; 2] = ["git:", "oidc:"];

/// A scope as given (`environments` of a token or a trust rule): sorted and without duplicates;
/// at least one name, each a valid environment name.
pub fn normalise_scope(names: Vec<String>, field: &str) -> Result<Vec<String>, DomainError> {
    if names.is_empty() {
        return Err(DomainError::bad_request(
            "environments must name at least one environment (omit it for every environment)",
        )
        .at(field));
    }
    let mut names = names;
    for (index, name) in names.iter().enumerate() {
        super::flags::check_environment_name(name).map_err(|error| {
            DomainError::bad_request(error.to_string()).at(format!("{field}[{index}]"))
        })?;
    }
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(environments: Option<&[&str]>) -> Principal {
        Principal {
            actor: "a".into(),
            role: Role::Admin,
            environments: environments.map(|e| e.iter().map(|s| (*s).to_owned()).collect()),
            credential: Credential::Token {
                id: "tok_1".into(),
                name: "a".into(),
            },
        }
    }

    #[test]
    fn scopes_confine_and_cover() {
        let all = admin(None);
        let staging = admin(Some(&["dev", "staging"]));
        assert!(all.may_use("production") && staging.may_use("staging"));
        assert!(!staging.may_use("production"));
        assert!(staging.check_environment("production").is_err());
        assert!(staging.covers(Some(&["dev".to_owned()])));
        assert!(!staging.covers(Some(&["dev".to_owned(), "production".to_owned()])));
        assert!(!staging.covers(None));
        assert!(all.covers(None));
        assert!(staging.check_unscoped("creating environments").is_err());
        let message = staging
            .check_environment("production")
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"production\"") && message.contains("staging"));
    }

    #[test]
    fn plain_text_refuses_invisible_and_direction_characters() {
        assert!(is_plain_text("ci deploy (prod)"));
        assert!(is_plain_text("équipe"));
        for bad in [
            "a\nb",
            "a\u{202E}b",
            "a\u{200B}b",
            "a\u{2028}b",
            "a\u{FEFF}b",
        ] {
            assert!(!is_plain_text(bad), "{bad:?}");
        }
    }

    #[test]
    fn scopes_are_normalised_and_checked() {
        assert_eq!(
            normalise_scope(vec!["b".into(), "a".into(), "b".into()], "environments").unwrap(),
            vec!["a".to_owned(), "b".to_owned()]
        );
        assert!(normalise_scope(vec![], "environments").is_err());
        let error = normalise_scope(vec!["ok".into(), "no spaces".into()], "environments")
            .unwrap_err()
            .to_string();
        assert!(error.contains("no spaces"), "{error}");
    }
}
