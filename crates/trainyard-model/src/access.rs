//! Who may do what. A request is made by a [`Caller`]: a user name and the [`Scope`] of the API
//! token it presented. Jobs belong to the user that created them (trials to their tuning job's
//! user); a caller sees and stops only its own user's jobs unless its scope is `admin`. A job that
//! is not visible to a caller does not exist for it (NotFound, as a resource of another AWS account).
//!
//! Token texts are parsed here (pure); hashing and storage are the coordinator's.

use std::fmt;
use std::str::FromStr;

use crate::DomainError;

/// What an API token allows, each including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Describe, list and read the logs of its user's jobs; list agents.
    Read,
    /// Read, plus create and stop its user's jobs.
    Submit,
    /// Everything, on every user's jobs; tokens, join tokens, agent revocation.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "submit" => Ok(Scope::Submit),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope '{other}': use read, submit or admin")),
        }
    }
}

/// The authenticated maker of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub scope: Scope,
}

impl Caller {
    /// The caller of a coordinator started with `--insecure`: no tokens, so everyone is an admin
    /// and the jobs they create have no owner.
    pub fn unauthenticated_admin() -> Self {
        Caller { user: String::new(), scope: Scope::Admin }
    }

    /// Fails with PermissionDenied, naming the operation and the scope it needs.
    pub fn require(&self, needed: Scope, operation: &str) -> Result<(), DomainError> {
        if self.scope >= needed {
            Ok(())
        } else {
            Err(DomainError::PermissionDenied(format!(
                "{operation} needs a token with scope '{needed}' or more; this token ({}) has scope '{}'",
                self.user, self.scope
            )))
        }
    }

    /// Whether a job owned by `owner` exists for this caller.
    pub fn sees(&self, owner: &str) -> bool {
        self.scope == Scope::Admin || self.user == owner
    }

    /// The owner a list must be restricted to (None: every job).
    pub fn list_filter(&self) -> Option<String> {
        (self.scope != Scope::Admin).then(|| self.user.clone())
    }
}

/// User names: what `Caller::user` and a job's owner hold.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if valid { Ok(()) } else { Err(format!("user name '{name}' must be 1-64 of [A-Za-z0-9-_.@]")) }
}

/// The name the coordinator's certificate is always valid for; agents and the CLI verify it
/// whatever address they dial (addresses change; the CA is the cluster's own).
pub const COORDINATOR_SERVER_NAME: &str = "coordinator.trainyard";

/// The kinds of secret the coordinator issues. The prefix tells them apart at a glance (and to
/// secret scanners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `tya_<id>_<secret>`: a client's API token, sent as `authorization: Bearer ...`.
    Api,
    /// `tyj_<id>_<secret>_<ca-sha256>`: lets an agent join once; carries the CA's fingerprint so
    /// the agent can trust the coordinator before it has anything else.
    Join,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Join => "join",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Api => "tya",
            TokenKind::Join => "tyj",
        }
    }
}

impl FromStr for TokenKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "api" => Ok(TokenKind::Api),
            "join" => Ok(TokenKind::Join),
            other => Err(format!("unknown token kind '{other}'")),
        }
    }
}

/// A token's parts. The id is public (it names the token in lists and revocations); only the
/// SHA-256 of the secret is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenText {
    pub kind: TokenKind,
    pub id: String,
    pub secret: String,
    /// Join tokens only: the hex SHA-256 of the CA certificate (DER).
    pub ca_fingerprint: Option<String>,
}

const ID_HEX: usize = 12;
const SECRET_HEX: usize = 48;
const FINGERPRINT_HEX: usize = 64;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TokenText {
    /// A token from random bytes (the caller's RNG: this crate has none): 6 for the id, 24 for the
    /// secret.
    pub fn new(kind: TokenKind, random: &[u8; 30], ca_fingerprint: Option<String>) -> Self {
        let hex = crate::hex::encode;
        TokenText { kind, id: hex(&random[..6]), secret: hex(&random[6..]), ca_fingerprint }
    }

    /// Parses a token text; the error says what is wrong without echoing the secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let parts: Vec<&str> = text.split('_').collect();
        let kind = match parts.first() {
            Some(&"tya") => TokenKind::Api,
            Some(&"tyj") => TokenKind::Join,
            _ => return Err("not a Trainyard token (it must start with tya_ or tyj_)".into()),
        };
        let expected = if kind == TokenKind::Api { 3 } else { 4 };
        if parts.len() != expected || !is_hex(parts[1], ID_HEX) || !is_hex(parts[2], SECRET_HEX) {
            return Err(format!("malformed {} token", kind.as_str()));
        }
        let ca_fingerprint = if kind == TokenKind::Join {
            if !is_hex(parts[3], FINGERPRINT_HEX) {
                return Err("malformed join token: the CA fingerprint is not 64 hex digits".into());
            }
            Some(parts[3].to_string())
        } else {
            None
        };
        Ok(TokenText { kind, id: parts[1].into(), secret: parts[2].into(), ca_fingerprint })
    }
}

impl fmt::Display for TokenText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}_{}", self.kind.prefix(), self.id, self.secret)?;
        if let Some(fp) = &self.ca_fingerprint {
            write!(f, "_{fp}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_include_the_ones_below() {
        let reader = Caller { user: "ana".into(), scope: Scope::Read };
        let submitter = Caller { user: "ana".into(), scope: Scope::Submit };
        assert!(reader.require(Scope::Read, "DescribeTrainingJob").is_ok());
        let denied = reader.require(Scope::Submit, "CreateTrainingJob").expect_err("read cannot submit");
        assert_eq!(
            denied.to_string(),
            "permission denied: CreateTrainingJob needs a token with scope 'submit' or more; this token (ana) has scope 'read'"
        );
        assert!(submitter.require(Scope::Read, "x").is_ok());
        assert!(submitter.require(Scope::Admin, "CreateToken").is_err());
        assert!(Caller::unauthenticated_admin().require(Scope::Admin, "x").is_ok());
    }

    #[test]
    fn only_admins_see_other_users_jobs() {
        let ana = Caller { user: "ana".into(), scope: Scope::Submit };
        let root = Caller { user: "ops".into(), scope: Scope::Admin };
        assert!(ana.sees("ana"));
        assert!(!ana.sees("bo"));
        assert!(!ana.sees(""), "jobs created without a token are not a user's");
        assert!(root.sees("bo"));
        assert_eq!(ana.list_filter().as_deref(), Some("ana"));
        assert_eq!(root.list_filter(), None);
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_named() {
        let api = TokenText::new(TokenKind::Api, &[7; 30], None);
        let text = api.to_string();
        assert!(text.starts_with("tya_070707070707_"), "{text}");
        assert_eq!(TokenText::parse(&text), Ok(api));
        let join = TokenText::new(TokenKind::Join, &[255; 30], Some("ab".repeat(32)));
        assert_eq!(TokenText::parse(&format!("  {join}\n")), Ok(join));

        assert_eq!(
            TokenText::parse("Bearer x").unwrap_err(),
            "not a Trainyard token (it must start with tya_ or tyj_)"
        );
        assert_eq!(TokenText::parse("tya_0707_0707").unwrap_err(), "malformed api token");
        let no_fingerprint = format!("tyj_{}_{}_abc", "a".repeat(12), "b".repeat(48));
        assert!(TokenText::parse(&no_fingerprint).unwrap_err().contains("CA fingerprint"));
        let upper = format!("tya_{}_{}", "A".repeat(12), "b".repeat(48));
        assert!(TokenText::parse(&upper).is_err(), "hex digits are lowercase");
    }

    #[test]
    fn scope_and_user_names_parse_with_clear_errors() {
        assert_eq!("submit".parse::<Scope>(), Ok(Scope::Submit));
        assert_eq!("root".parse::<Scope>().unwrap_err(), "unknown scope 'root': use read, submit or admin");
        assert!(check_user_name("ana.lopez@lab").is_ok());
        assert!(check_user_name("").is_err());
        assert!(check_user_name("a b").is_err());
        assert!(check_user_name(&"x".repeat(65)).is_err());
    }
}
