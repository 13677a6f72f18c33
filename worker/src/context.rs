//! Build contexts: a tar of the context directory built with the `tar` crate, honouring
//! `.dockerignore` (Docker's pattern rules: `*`, `?`, `**`, `!` exceptions, last match wins, a
//! matched directory excludes its content). The Dockerfile is always sent, `.git` never.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read build context {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Dockerfile {name}: {reason}")]
    Dockerfile { name: String, reason: String },
}

/// Largest Dockerfile read (Docker's own parser has no limit; real ones are a few KiB).
const DOCKERFILE_MAX: u64 = 1024 * 1024;

/// Reads the Dockerfile `dockerfile` (relative to the context `dir`): a regular file of at most
/// 1 MiB whose path, symlinks resolved, stays inside the context.
pub fn read_dockerfile(dir: &Path, dockerfile: &str) -> Result<String, ContextError> {
    let bad = |reason: String| ContextError::Dockerfile {
        name: dockerfile.to_owned(),
        reason,
    };
    let root = dir
        .canonicalize()
        .map_err(|e| bad(format!("context: {e}")))?;
    let path = dir
        .join(dockerfile)
        .canonicalize()
        .map_err(|e| bad(e.to_string()))?;
    if !path.starts_with(&root) {
        return Err(bad("resolves outside the build context".to_owned()));
    }
    let meta = std::fs::metadata(&path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("is not a regular file".to_owned()));
    }
    if meta.len() > DOCKERFILE_MAX {
        return Err(bad(format!("is larger than {DOCKERFILE_MAX} bytes")));
    }
    std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))
}

#[derive(Debug, Clone)]
struct Pattern {
    segments: Vec<String>,
    exclude: bool,
}

/// Parsed `.dockerignore` rules.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

impl Ignore {
    pub fn parse(text: &str) -> Self {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|line| {
                let (exclude, pat) = match line.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, line),
                };
                let clean = crate::compose::normalize(Path::new(pat.trim_start_matches('/')));
                let segments: Vec<String> = clean
                    .to_string_lossy()
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                (!segments.is_empty()).then_some(Pattern { segments, exclude })
            })
            .collect();
        Self { patterns }
    }

    /// Whether the relative path `rel` (with `/` separators) is left out of the context.
    pub fn ignored(&self, rel: &str) -> bool {
        let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        let mut ignored = false;
        for p in &self.patterns {
            // A pattern matching the path or one of its parent directories applies.
            let hit = (1..=parts.len()).any(|n| match_segments(&p.segments, &parts[..n]));
            if hit {
                ignored = !p.exclude;
            }
        }
        ignored
    }

    /// Whether some `!` exception could re-include something below directory `rel`.
    fn may_reinclude_below(&self, rel: &str) -> bool {
        let depth = rel.split('/').filter(|s| !s.is_empty()).count();
        self.patterns.iter().any(|p| {
            p.exclude && (p.segments.len() > depth || p.segments.iter().any(|s| s == "**"))
        })
    }
}

fn match_segments(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((seg, path_rest)) => {
                glob(first.as_bytes(), seg.as_bytes()) && match_segments(rest, path_rest)
            }
            None => false,
        },
    }
}

/// One path segment against a pattern with `*`, `?`, `[...]` and `\` escapes.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((b'[', rest)) => {
            let Some(end) = rest.iter().position(|&c| c == b']') else {
                return false;
            };
            let (class, after) = (&rest[..end], &rest[end + 1..]);
            let Some((&c, s_rest)) = s.split_first() else {
                return false;
            };
            let (negate, class) = match class.split_first() {
                Some((b'^' | b'!', tail)) => (true, tail),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob(after, s_rest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            s.first() == Some(&rest[0]) && glob(&rest[1..], &s[1..])
        }
        Some((&c, rest)) => s.first() == Some(&c) && glob(rest, &s[1..]),
    }
}

/// Tars the context directory `dir` (deterministic headers, sorted entries, symlinks kept as
/// links). `dockerfile` is the Dockerfile's path relative to `dir`; its entry holds
/// `dockerfile_text` (what the worker read and amended, see [`crate::images::with_labels`]).
pub fn tar_context(
    dir: &Path,
    dockerfile: &str,
    dockerfile_text: &str,
) -> Result<Vec<u8>, ContextError> {
    finish_context(
        tar_context_files(dir, dockerfile)?,
        dockerfile,
        dockerfile_text,
    )
    .map_err(|source| ContextError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// The entries of the context directory `dir` but the Dockerfile (at `dockerfile`), as a tar
/// stream without its end marker: the same files give the same bytes, so their digest says
/// whether a context changed, and [`finish_context`] adds the Dockerfile later.
pub fn tar_context_files(dir: &Path, dockerfile: &str) -> Result<Vec<u8>, ContextError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContextError::Io { path, source }
    };
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => Ignore::parse(&text),
        Err(_) => Ignore::default(),
    };
    let dockerfile = crate::compose::normalize(Path::new(dockerfile))
        .to_string_lossy()
        .into_owned();
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let abs = dir.join(&rel_dir);
        let mut entries: Vec<_> = std::fs::read_dir(&abs)
            .map_err(io(&abs))?
            .collect::<Result<_, _>>()
            .map_err(io(&abs))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel_dir.join(entry.file_name());
            let rel_str = rel.to_string_lossy().replace('\\', "/");
            if rel_str == ".git" {
                continue;
            }
            let file_type = entry.file_type().map_err(io(&entry.path()))?;
            let ignored =
                ignore.ignored(&rel_str) && rel_str != dockerfile && rel_str != ".dockerignore";
            if file_type.is_dir() {
                if !ignored || ignore.may_reinclude_below(&rel_str) {
                    if !ignored {
                        builder
                            .append_dir(&rel, entry.path())
                            .map_err(io(&entry.path()))?;
                    }
                    stack.push(rel);
                }
            } else if !ignored && rel_str != dockerfile {
                builder
                    .append_path_with_name(entry.path(), &rel)
                    .map_err(io(&entry.path()))?;
            }
        }
    }
    let mut bytes = builder.into_inner().map_err(io(dir))?;
    // `into_inner` ends the archive with two zero blocks; [`finish_context`] writes them anew.
    bytes.truncate(bytes.len().saturating_sub(1024));
    Ok(bytes)
}

/// Ends the entries `files` of [`tar_context_files`] with the Dockerfile entry (at
/// `dockerfile`, holding `dockerfile_text`) and the archive's end marker.
pub fn finish_context(
    files: Vec<u8>,
    dockerfile: &str,
    dockerfile_text: &str,
) -> std::io::Result<Vec<u8>> {
    let dockerfile = crate::compose::normalize(Path::new(dockerfile))
        .to_string_lossy()
        .into_owned();
    let mut builder = tar::Builder::new(files);
    builder.mode(tar::HeaderMode::Deterministic);
    // The Dockerfile goes last, whatever the walk met at its path (even an ignored folder).
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(dockerfile_text.len() as u64);
    builder.append_data(&mut header, &dockerfile, dockerfile_text.as_bytes())?;
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_table() {
        let ignore = Ignore::parse(
            "# comment\nnode_modules\n*.log\n!keep.log\n/build/\ndocs/**/*.md\n!docs/README.md\ntmp?\n[ab].txt\n**/secret\n",
        );
        let cases: &[(&str, bool)] = &[
            ("node_modules", true),
            ("node_modules/x/y.js", true),
            ("src/node_modules", false),
            ("app.log", true),
            ("keep.log", false),
            ("logs/app.log", false),
            ("build", true),
            ("build/out.bin", true),
            ("docs/a/b/c.md", true),
            ("docs/c.md", true),
            ("docs/README.md", false),
            ("docs/c.txt", false),
            ("tmp1", true),
            ("tmp12", false),
            ("a.txt", true),
            ("c.txt", false),
            ("secret", true),
            ("deep/er/secret", true),
            ("Dockerfile", false),
        ];
        for (path, want) in cases {
            assert_eq!(ignore.ignored(path), *want, "{path}");
        }
    }

    #[test]
    fn tar_honours_dockerignore_and_keeps_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("node_modules/pkg")).unwrap();
        std::fs::create_dir_all(d.join("src")).unwrap();
        std::fs::create_dir_all(d.join(".git")).unwrap();
        std::fs::write(d.join(".git/HEAD"), "x").unwrap();
        std::fs::write(d.join("node_modules/pkg/i.js"), "x").unwrap();
        std::fs::write(d.join("src/main.sh"), "echo").unwrap();
        std::fs::write(d.join("Dockerfile"), "FROM x").unwrap();
        std::fs::write(d.join("debug.log"), "x").unwrap();
        std::fs::write(d.join(".dockerignore"), "node_modules\n*.log\nDockerfile\n").unwrap();
        std::os::unix::fs::symlink("src/main.sh", d.join("link")).unwrap();
        let bytes = tar_context(d, "Dockerfile", "FROM x\nLABEL a=b\n").unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".dockerignore", "Dockerfile", "link", "src", "src/main.sh"]
        );
        let mut sent = String::new();
        for entry in tar::Archive::new(bytes.as_slice()).entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some("Dockerfile") {
                std::io::Read::read_to_string(&mut entry, &mut sent).unwrap();
            }
        }
        assert_eq!(
            sent, "FROM x\nLABEL a=b\n",
            "the amended text is what is sent"
        );
        assert_eq!(
            bytes,
            tar_context(d, "Dockerfile", "FROM x\nLABEL a=b\n").unwrap(),
            "deterministic"
        );
    }

    #[test]
    fn dockerfiles_stay_in_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(outside.path().join("secret"), "host secret").unwrap();
        std::fs::write(d.join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/Dockerfile.dev"), "FROM y\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), d.join("Leak")).unwrap();
        std::os::unix::fs::symlink("sub/Dockerfile.dev", d.join("Inside")).unwrap();
        assert_eq!(read_dockerfile(d, "Dockerfile").unwrap(), "FROM x\n");
        assert_eq!(read_dockerfile(d, "Inside").unwrap(), "FROM y\n");
        // Both temporary folders share a parent, so this path names the
        // secret through `..`; a fixed name such as `../x` would depend on
        // what else the machine's temporary folder holds.
        let climb = format!(
            "../{}/secret",
            outside.path().file_name().unwrap().to_str().unwrap()
        );
        for (name, want) in [
            (
                "Leak".to_owned(),
                "Dockerfile Leak: resolves outside the build context".to_owned(),
            ),
            (
                "sub".to_owned(),
                "Dockerfile sub: is not a regular file".to_owned(),
            ),
            (
                climb.clone(),
                format!("Dockerfile {climb}: resolves outside the build context"),
            ),
            (
                "missing".to_owned(),
                "Dockerfile missing: No such file or directory (os error 2)".to_owned(),
            ),
        ] {
            let err = read_dockerfile(d, &name).unwrap_err().to_string();
            assert_eq!(err, want);
            assert!(!err.contains("host secret"));
        }
    }
}
