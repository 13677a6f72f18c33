//! A secret string: redacted in `Debug` and `Display`, compared in constant time, loadable from a
//! value, an environment variable or a `*_FILE` path. The one secret type of every berth crate
//! (tokens of the master, the worker, the registry and the front door).

use std::fmt;
use std::path::Path;

use subtle::ConstantTimeEq;

#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads a secret from a file, trimming one trailing newline (as `echo x > file` writes it).
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let raw = std::fs::read_to_string(path)?;
        Ok(Self(raw.strip_suffix('\n').unwrap_or(&raw).to_owned()))
    }

    /// A secret given as a value or in a file (a `--x` / `--x-file` flag pair, or `X` / `X_FILE`
    /// variables): the value wins; neither is `None`.
    pub fn from_value_or_file(
        value: Option<String>,
        file: Option<&Path>,
    ) -> std::io::Result<Option<Self>> {
        match (value, file) {
            (Some(value), _) => Ok(Some(Self(value))),
            (None, Some(path)) => Self::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The secret itself, for the few places that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &str) -> bool {
        !self.0.is_empty() && bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.expose()) || (self.is_empty() && other.is_empty())
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_and_compared() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(<redacted>) <redacted>");
        assert!(s.matches("hunter2"));
        assert!(!s.matches("hunter3"));
        assert!(!s.matches(""));
        assert!(!Secret::new("").matches(""));
    }

    #[test]
    fn from_file_trims_one_newline() {
        let dir = std::env::temp_dir().join(format!("berth-secret-{}", std::process::id()));
        std::fs::write(&dir, "tok\n").unwrap();
        assert_eq!(Secret::from_file(&dir).unwrap().expose(), "tok");
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn the_value_wins_over_the_file() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "from-file\n").unwrap();
        let pick = |v: Option<&str>, f: Option<&Path>| {
            Secret::from_value_or_file(v.map(str::to_owned), f)
                .unwrap()
                .map(|s| s.expose().to_owned())
        };
        assert_eq!(pick(Some("v"), Some(file.path())).as_deref(), Some("v"));
        assert_eq!(pick(None, Some(file.path())).as_deref(), Some("from-file"));
        assert_eq!(pick(None, None), None);
        assert!(Secret::from_value_or_file(None, Some(Path::new("/no/such/file"))).is_err());
    }
}
