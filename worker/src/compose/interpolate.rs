//! `.env` parsing and Compose variable interpolation (`$V`, `${V}`, `${V:-d}`, `${V-d}`,
//! `${V:?e}`, `${V?e}`, `${V:+r}`, `${V+r}`, `$$`), applied to raw YAML values before parsing.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

/// Variables visible to interpolation: the project's `.env` only. The worker's own environment
/// is deliberately not visible, so a stack can never read the worker's secrets.
pub type Vars = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    #[error("invalid interpolation format in {0:?}")]
    Syntax(String),
    #[error("required variable {name} is missing a value: {message}")]
    Required { name: String, message: String },
}

impl InterpolateError {
    /// What went wrong, without any text of the input (which may be a host file's line).
    fn kind(&self) -> &'static str {
        match self {
            Self::Syntax(_) => "invalid interpolation format",
            Self::Required { .. } => "a required variable is missing a value",
        }
    }
}

/// Parses a `.env` file: `KEY=VALUE` lines, `#` comments, optional `export `, single quotes
/// (literal), double quotes (with `\n`, `\"`, `\\` escapes and interpolation), unquoted values
/// trimmed with ` #` comments cut. Later values may refer to earlier ones. An error is the line
/// number and a reason that never quotes the line.
pub fn parse_env_file(text: &str) -> Result<Vars, (usize, String)> {
    let mut vars = Vars::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            // Compose accepts a bare `KEY` (meaning "unset" in env files); nothing to record.
            if is_name(line) {
                continue;
            }
            return Err((n + 1, "expected KEY=VALUE".to_owned()));
        };
        let key = key.trim();
        if !is_name(key) {
            return Err((n + 1, "invalid variable name".to_owned()));
        }
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('\'') {
            let end = inner
                .find('\'')
                .ok_or_else(|| (n + 1, "unterminated single quote".to_owned()))?;
            inner[..end].to_owned()
        } else if let Some(inner) = value.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = inner.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some(other) => out.push(other),
                        None => out.push('\\'),
                    },
                    c => out.push(c),
                }
            }
            if !closed {
                return Err((n + 1, "unterminated double quote".to_owned()));
            }
            interpolate_str(&out, &vars).map_err(|e| (n + 1, e.kind().to_owned()))?
        } else {
            let cut = value.find(" #").map_or(value, |i| &value[..i]).trim_end();
            interpolate_str(cut, &vars).map_err(|e| (n + 1, e.kind().to_owned()))?
        };
        vars.insert(key.to_owned(), value);
    }
    Ok(vars)
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Interpolates every string scalar (not mapping keys) of a YAML tree in place.
pub fn interpolate_value(value: &mut Value, vars: &Vars) -> Result<(), InterpolateError> {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                *s = interpolate_str(s, vars)?;
            }
        }
        Value::Sequence(seq) => {
            for v in seq {
                interpolate_value(v, vars)?;
            }
        }
        Value::Mapping(map) => {
            for (_, v) in map.iter_mut() {
                interpolate_value(v, vars)?;
            }
        }
        Value::Tagged(tagged) => interpolate_value(&mut tagged.value, vars)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Interpolates one string.
pub fn interpolate_str(input: &str, vars: &Vars) -> Result<String, InterpolateError> {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c != b'$' {
            // Copy one UTF-8 character.
            let ch = input[i..].chars().next().unwrap_or_default();
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let start = i + 2;
                let end = matching_brace(input, start)
                    .ok_or_else(|| InterpolateError::Syntax(input.to_owned()))?;
                out.push_str(&expand(&input[start..end], vars, input)?);
                i = end + 1;
            }
            Some(b) if b.is_ascii_alphabetic() || *b == b'_' => {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_')
                {
                    end += 1;
                }
                out.push_str(vars.get(&input[start..end]).map_or("", String::as_str));
                i = end;
            }
            _ => return Err(InterpolateError::Syntax(input.to_owned())),
        }
    }
    Ok(out)
}

/// Index of the `}` closing a `${` whose body starts at `start`, honouring nested `${...}`.
fn matching_brace(input: &str, start: usize) -> Option<usize> {
    let bytes = input.as_bytes();
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
                continue;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn expand(body: &str, vars: &Vars, whole: &str) -> Result<String, InterpolateError> {
    let name_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let name = &body[..name_len];
    if !is_name(name) {
        return Err(InterpolateError::Syntax(whole.to_owned()));
    }
    let op = &body[name_len..];
    let value = vars.get(name);
    let set = value.is_some();
    let non_empty = value.is_some_and(|v| !v.is_empty());
    let word = |skip: usize| interpolate_str(&op[skip..], vars);
    let own = || value.cloned().unwrap_or_default();
    Ok(if op.is_empty() {
        own()
    } else if op.starts_with(":-") {
        if non_empty { own() } else { word(2)? }
    } else if op.starts_with('-') {
        if set { own() } else { word(1)? }
    } else if op.starts_with(":?") {
        if non_empty {
            own()
        } else {
            return Err(InterpolateError::Required {
                name: name.to_owned(),
                message: word(2)?,
            });
        }
    } else if op.starts_with('?') {
        if set {
            own()
        } else {
            return Err(InterpolateError::Required {
                name: name.to_owned(),
                message: word(1)?,
            });
        }
    } else if op.starts_with(":+") {
        if non_empty { word(2)? } else { String::new() }
    } else if op.starts_with('+') {
        if set { word(1)? } else { String::new() }
    } else {
        return Err(InterpolateError::Syntax(whole.to_owned()));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        [("SET", "v"), ("EMPTY", ""), ("PORT", "8080")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn interpolation_table() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("plain", Ok("plain")),
            ("$SET", Ok("v")),
            ("${SET}", Ok("v")),
            ("a${SET}b", Ok("avb")),
            ("$SET-x", Ok("v-x")),
            ("${UNSET}", Ok("")),
            ("${UNSET:-d}", Ok("d")),
            ("${EMPTY:-d}", Ok("d")),
            ("${SET:-d}", Ok("v")),
            ("${UNSET-d}", Ok("d")),
            ("${EMPTY-d}", Ok("")),
            ("${SET:+r}", Ok("r")),
            ("${EMPTY:+r}", Ok("")),
            ("${EMPTY+r}", Ok("r")),
            ("${UNSET+r}", Ok("")),
            ("${SET:?boom}", Ok("v")),
            (
                "${EMPTY:?boom}",
                Err("required variable EMPTY is missing a value: boom"),
            ),
            (
                "${UNSET?gone}",
                Err("required variable UNSET is missing a value: gone"),
            ),
            ("${EMPTY?gone}", Ok("")),
            ("$$SET", Ok("$SET")),
            ("$${SET}", Ok("${SET}")),
            ("${UNSET:-${PORT}}", Ok("8080")),
            ("${UNSET:-a:${SET}:b}", Ok("a:v:b")),
            ("héllo ${SET}", Ok("héllo v")),
            ("${SET", Err("invalid interpolation format in \"${SET\"")),
            ("${}", Err("invalid interpolation format in \"${}\"")),
            (
                "cost: 5$",
                Err("invalid interpolation format in \"cost: 5$\""),
            ),
            (
                "${SET!x}",
                Err("invalid interpolation format in \"${SET!x}\""),
            ),
        ];
        for (input, expected) in cases {
            let got = interpolate_str(input, &vars()).map_err(|e| e.to_string());
            assert_eq!(
                got.as_deref().map_err(String::as_str),
                *expected,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn env_file_table() {
        let text = "# comment\n\nA=1\nexport B = two words \nC='lit ${A}'\nD=\"q\\n${A}\"\nE=x #c\nF=${A}-f\nBARE\n";
        let vars = parse_env_file(text).unwrap();
        let want: Vars = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "lit ${A}"),
            ("D", "q\n1"),
            ("E", "x"),
            ("F", "1-f"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(vars, want);
        // Errors name the line, never its text (the file may be anything a symlink reached).
        for (text, want) in [
            ("1X=2", (1, "invalid variable name")),
            ("A=1\nA='x", (2, "unterminated single quote")),
            (
                "A=1\n\nroot:$6$hash:19000:0:99999:7:::",
                (3, "expected KEY=VALUE"),
            ),
            ("MIIEv+QIBADAN/Bgkq=AQEFAASC", (1, "invalid variable name")),
            ("A=\"secret$\"", (1, "invalid interpolation format")),
            (
                "A=${B:?secret}",
                (1, "a required variable is missing a value"),
            ),
        ] {
            let got = parse_env_file(text).unwrap_err();
            assert_eq!((got.0, got.1.as_str()), want, "{text:?}");
        }
    }

    #[test]
    fn yaml_values_not_keys() {
        let mut v: Value = serde_yaml_ng::from_str("$SET: ${SET}\nlist: [a$SET, 3]").unwrap();
        interpolate_value(&mut v, &vars()).unwrap();
        assert_eq!(
            serde_yaml_ng::to_string(&v).unwrap(),
            "$SET: v\nlist:\n- av\n- 3\n"
        );
    }
}
