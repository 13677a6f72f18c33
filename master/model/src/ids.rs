//! Validation of instance ids, user names and project names before they reach a git path, a
//! Docker name or a KV key. One rule for all three: `[a-z0-9][a-z0-9_.-]{0,62}`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// The documented rule, quoted in every error.
pub const NAME_RULE: &str = "1 to 63 characters from [a-z0-9_.-], starting with [a-z0-9]";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: must be {NAME_RULE}")]
pub struct IdError {
    pub field: &'static str,
    pub value: String,
}

/// Checks `value` against the name rule; `field` names what is checked in the error.
pub fn validate(field: &'static str, value: &str) -> Result<(), IdError> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(IdError {
            field,
            // Keep hostile input out of logs at a bounded size.
            value: value.chars().take(80).collect(),
        })
    }
}

/// A name that passed [`validate`]. Deserialising one validates it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ValidName(String);

impl ValidName {
    pub fn parse(field: &'static str, value: &str) -> Result<Self, IdError> {
        validate(field, value)?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ValidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ValidName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ValidName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ValidName::parse("name", &s).map_err(serde::de::Error::custom)
    }
}

/// The Docker Compose project name of an instance. Compose project names allow
/// `[a-z0-9][a-z0-9_-]*`, so an id holding a `.` maps to a name with `-` in its place plus a short
/// hash of the id, which keeps `a.b` and `a-b` apart. Ids without a `.` are used as they are, so
/// `docker compose -p <id> ps` works for them.
pub fn compose_project_name(id: &ValidName) -> String {
    let id = id.as_str();
    if !id.contains('.') {
        return id.to_owned();
    }
    let digest = Sha256::digest(id.as_bytes());
    format!("{}-{}", id.replace('.', "-"), &hex::encode(digest)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rule() {
        let cases: &[(&str, bool)] = &[
            ("a", true),
            ("0", true),
            ("app-1.v2_x", true),
            (&"a".repeat(63), true),
            (&"a".repeat(64), false),
            ("", false),
            ("-a", false),
            (".a", false),
            ("_a", false),
            ("A", false),
            ("a/b", false),
            ("..", false),
            ("a b", false),
            ("a\0", false),
            ("é", false),
        ];
        for (input, ok) in cases {
            assert_eq!(validate("id", input).is_ok(), *ok, "{input:?}");
        }
    }

    #[test]
    fn error_names_field_and_rule() {
        let err = validate("user", "Bad/Name").unwrap_err().to_string();
        assert!(err.contains("invalid user \"Bad/Name\""), "{err}");
        assert!(err.contains(NAME_RULE), "{err}");
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<ValidName>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<ValidName>("\"../x\"").is_err());
    }

    #[test]
    fn project_names() {
        let plain = ValidName::parse("id", "shop-1").unwrap();
        assert_eq!(compose_project_name(&plain), "shop-1");
        let dotted = ValidName::parse("id", "a.b").unwrap();
        let dashed = ValidName::parse("id", "a-b").unwrap();
        let p = compose_project_name(&dotted);
        assert!(p.starts_with("a-b-") && p.len() == 12, "{p}");
        assert_ne!(p, compose_project_name(&dashed));
    }
}
