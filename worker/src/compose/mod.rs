//! Native Compose support: file discovery, `.env` interpolation, a permissive parser into a
//! plain project model with explicit errors for unsupported keys, and a planner (dependency
//! order, names, labels, config hash).
//!
//! Why an own parser on `serde_yaml_ng`: the typed crates (`docker-compose-types`,
//! `compose_spec`) fail the whole parse on any unknown key without saying which one matters, do
//! no interpolation and sit on the deprecated `serde_yaml`. Walking an interpolated
//! `serde_yaml_ng::Value` lets every rejection name its path (`services.web.deploy`) and collect
//! all problems of a file at once, which is what the master hands back as a 422.

mod duration;
pub mod interpolate;
pub mod model;
mod parse;
pub mod plan;
pub mod service_env;
mod shell_words;
pub mod units;

use std::path::{Path, PathBuf};

use berth_worker_api::ErrorDetail;
use serde_yaml_ng::Value;

pub use model::{
    Condition, Healthcheck, Limit, Mount, MountSource, PortSpec, Project, Resources, Restart,
    Service,
};

/// Compose file names in the order Compose looks for them, each with its override file.
pub const FILE_NAMES: &[(&str, &str)] = &[
    ("compose.yaml", "compose.override.yaml"),
    ("compose.yml", "compose.override.yml"),
    ("docker-compose.yml", "docker-compose.override.yml"),
    ("docker-compose.yaml", "docker-compose.override.yaml"),
];

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("no compose file in the project (looked for {})", FILE_NAMES.iter().map(|f| f.0).collect::<Vec<_>>().join(", "))]
    NoFile,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Yaml { file: String, message: String },
    #[error("invalid compose file: {}", summary(.0))]
    Invalid(Vec<ErrorDetail>),
}

impl ComposeError {
    /// The problems as the worker API reports them.
    pub fn details(&self) -> Vec<ErrorDetail> {
        match self {
            Self::Invalid(details) => details.clone(),
            other => vec![ErrorDetail {
                service: None,
                field: "(file)".to_owned(),
                reason: other.to_string(),
            }],
        }
    }
}

/// `service.field: reason; ...` for messages.
pub fn summary(details: &[ErrorDetail]) -> String {
    details
        .iter()
        .map(|d| format!("{}: {}", d.field, d.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Finds the compose file (and its override) in `dir`.
pub fn find_files(dir: &Path) -> Result<Vec<PathBuf>, ComposeError> {
    for (main, over) in FILE_NAMES {
        let path = dir.join(main);
        if path.is_file() {
            let mut files = vec![path];
            let over = dir.join(over);
            if over.is_file() {
                files.push(over);
            }
            return Ok(files);
        }
    }
    Err(ComposeError::NoFile)
}

/// `a/./b/../c` -> `a/c` without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn lexically_inside(path: &Path, dir: &Path) -> bool {
    normalize(path).starts_with(normalize(dir))
}

/// Largest compose, `.env` or `env_file` file the worker reads.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// Reads a file of the project: `path` with its symlinks resolved must stay inside `root` (the
/// project directory, canonical) and be a regular file of at most `MAX_FILE_BYTES`. `None`
/// when nothing is there. The error is a reason without the file's content.
pub(crate) fn read_in_project(path: &Path, root: &Path) -> Result<Option<String>, String> {
    let real = match path.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    if !real.starts_with(root) {
        return Err("resolves outside the project directory".to_owned());
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".to_owned());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("is larger than {} MiB", MAX_FILE_BYTES >> 20));
    }
    std::fs::read_to_string(&real)
        .map(Some)
        .map_err(|e| format!("cannot be read: {e}"))
}

/// Loads the project in `dir` under the Compose project name `name`.
pub fn load(dir: &Path, name: &str) -> Result<Project, ComposeError> {
    let files = find_files(dir)?;
    let root = dir.canonicalize().map_err(|source| ComposeError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let invalid = |field: &str, reason: String| {
        ComposeError::Invalid(vec![ErrorDetail {
            service: None,
            field: field.to_owned(),
            reason,
        }])
    };
    let vars = match read_in_project(&dir.join(".env"), &root) {
        Ok(Some(text)) => interpolate::parse_env_file(&text)
            .map_err(|(line, reason)| invalid(".env", format!(".env:{line}: {reason}")))?,
        Ok(None) => Default::default(),
        Err(reason) => return Err(invalid(".env", format!(".env {reason}"))),
    };
    let mut merged: Option<Value> = None;
    for file in &files {
        let display = file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = match read_in_project(file, &root) {
            Ok(Some(text)) => text,
            Ok(None) => return Err(invalid(&display, format!("{display} is missing"))),
            Err(reason) => return Err(invalid(&display, format!("{display} {reason}"))),
        };
        let mut value: Value = serde_yaml_ng::from_str(&text).map_err(|e| ComposeError::Yaml {
            file: display.clone(),
            message: e.to_string(),
        })?;
        value.apply_merge().map_err(|e| ComposeError::Yaml {
            file: display.clone(),
            message: e.to_string(),
        })?;
        interpolate::interpolate_value(&mut value, &vars).map_err(|e| {
            ComposeError::Invalid(vec![ErrorDetail {
                service: None,
                field: display.clone(),
                reason: e.to_string(),
            }])
        })?;
        merged = Some(match merged {
            None => value,
            Some(mut base) => {
                merge(&mut base, value);
                base
            }
        });
    }
    let root = merged.unwrap_or(Value::Null);
    parse::Parser::new(dir, &vars)
        .project(&root, name, files)
        .map_err(ComposeError::Invalid)
}

/// Override semantics: mappings merge key by key, anything else is replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests;
