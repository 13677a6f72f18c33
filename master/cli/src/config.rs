//! Which master to talk to and with which token: flags and environment first, then the config
//! file, then the cluster `scripts/up.sh` runs on this machine, found by itself.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::Global;
use crate::failure::Failure;

/// Where the CLI sends its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Base URL without a trailing `/`.
    pub url: String,
    pub token: Option<String>,
    /// Default owner of new instances, from the config file.
    pub user: Option<String>,
}

/// The config file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    master: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    user: Option<String>,
}

/// What `scripts/up.sh` leaves under its state folder (`.berth/` by default).
#[derive(Debug)]
struct Local {
    url: String,
    token_file: PathBuf,
}

/// The master address up.sh listens on when `master-url` is missing (an older up.sh run).
const LOCAL_DEFAULT: &str = "http://127.0.0.1:8080";

pub fn resolve(global: &Global) -> Result<Target, Failure> {
    let file = load_file(global.config.as_deref())?;
    let local = find_local();
    let (url, from_local) = match (&global.master, &file.master, &local) {
        (Some(url), _, _) | (None, Some(url), _) => (normalise(url)?, false),
        (None, None, Some(local)) => (local.url.clone(), true),
        (None, None, None) => {
            return Err(Failure::usage("no master configured").with_hint(
                "set BERTH_MASTER (and BERTH_TOKEN), write ~/.config/berth/config.toml, or run \
                 scripts/up.sh on this machine",
            ));
        }
    };
    let token = if let Some(token) = &global.token {
        Some(token.clone())
    } else if let Some(path) = &global.token_file {
        Some(read_token(path)?)
    } else if let Some(token) = &file.token {
        Some(token.clone())
    } else if let Some(path) = &file.token_file {
        Some(read_token(path)?)
    } else {
        // The local cluster's token goes only to the local master, never to one named elsewhere.
        match &local {
            Some(local) if from_local || local.url == url => read_token(&local.token_file).ok(),
            _ => None,
        }
    };
    Ok(Target {
        url,
        token,
        user: file.user,
    })
}

/// `host:port` means `http://host:port`; a trailing `/` is dropped.
fn normalise(url: &str) -> Result<String, Failure> {
    let url = url.trim().trim_end_matches('/');
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    if !url.starts_with("http://") {
        return Err(Failure::usage(format!(
            "master URL {url:?}: this build of berth speaks plain http:// only"
        ))
        .with_hint("reach an https master through a local tunnel or proxy"));
    }
    Ok(url)
}

fn read_token(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read token file {}: {e}", path.display())))?;
    Ok(text.trim().to_owned())
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("berth/config.toml"))
}

/// The named file must exist; the default one may be absent.
fn load_file(explicit: Option<&Path>) -> Result<FileConfig, Failure> {
    let (path, required) = match explicit {
        Some(p) => (p.to_owned(), true),
        None => match default_config_path() {
            Some(p) => (p, false),
            None => return Ok(FileConfig::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileConfig::default());
        }
        Err(e) => {
            return Err(Failure::usage(format!(
                "cannot read config file {}: {e}",
                path.display()
            )));
        }
    };
    toml::from_str(&text)
        .map_err(|e| Failure::usage(format!("config file {}: {e}", path.display())))
}

/// up.sh's state folder: `BERTH_HOME`, else a `.berth/` holding the master's token in the
/// current folder or one above it, or above this binary (`target/debug/berth` in the checkout).
fn find_local() -> Option<Local> {
    if let Some(home) = std::env::var_os("BERTH_HOME").filter(|v| !v.is_empty()) {
        return local_at(Path::new(&home));
    }
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        starts.extend(exe.parent().map(Path::to_owned));
    }
    starts.iter().find_map(|start| {
        start
            .ancestors()
            .find_map(|dir| local_at(&dir.join(".berth")))
    })
}

fn local_at(home: &Path) -> Option<Local> {
    let token_file = home.join("master/api-token");
    if !token_file.is_file() {
        return None;
    }
    let url = std::fs::read_to_string(home.join("master-url"))
        .ok()
        .and_then(|u| normalise(&u).ok())
        .unwrap_or_else(|| LOCAL_DEFAULT.to_owned());
    Some(Local { url, token_file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(
            normalise("127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(normalise("http://m:1/\n").unwrap(), "http://m:1");
        assert!(normalise("https://m").is_err());
    }

    #[test]
    fn local_cluster_is_read_from_its_state_folder() {
        let home = tempfile::tempdir().unwrap();
        assert!(local_at(home.path()).is_none());
        std::fs::create_dir_all(home.path().join("master")).unwrap();
        std::fs::write(home.path().join("master/api-token"), "tok\n").unwrap();
        let local = local_at(home.path()).unwrap();
        assert_eq!(local.url, LOCAL_DEFAULT);
        assert_eq!(read_token(&local.token_file).unwrap(), "tok");
        std::fs::write(home.path().join("master-url"), "http://127.0.0.1:9090\n").unwrap();
        assert_eq!(local_at(home.path()).unwrap().url, "http://127.0.0.1:9090");
    }

    #[test]
    fn config_file_is_strict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "master = \"m:1\"\nuser = \"ann\"\n").unwrap();
        let c = load_file(Some(&path)).unwrap();
        assert_eq!(c.master.as_deref(), Some("m:1"));
        std::fs::write(&path, "mastr = \"m:1\"\n").unwrap();
        assert!(load_file(Some(&path)).is_err());
        assert!(load_file(Some(&dir.path().join("missing"))).is_err());
    }
}
