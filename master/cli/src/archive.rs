//! Packs an app folder into the tar.gz the master's upload takes, refusing before anything is
//! sent what the master would refuse: no compose file at the root, links leaving the folder,
//! devices, fifos and sockets, names the master does not accept, and its default size caps.
//! `.git` folders are left out (the master keeps the code in git itself and refuses them).
//! Entries are written in name order with zero timestamps, so an unchanged folder packs to the
//! same bytes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

/// The compose file names the master looks for at the root of an upload.
pub const COMPOSE_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];

/// The master's default upload caps (`--max-*` flags of `berth-master`); a master configured
/// with smaller ones still refuses with a 413 naming the cap.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub ratio: u64,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            compressed_bytes: 64 * 1024 * 1024,
            uncompressed_bytes: 256 * 1024 * 1024,
            files: 10_000,
            file_bytes: 64 * 1024 * 1024,
            ratio: 100,
        }
    }
}

/// Decompressed size below which the master does not check the compression ratio.
const RATIO_FLOOR_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("no compose file at the root of {} (looked for {})", .0.display(), COMPOSE_FILES.join(", "))]
    MissingCompose(PathBuf),
    #[error("refusing {entry:?}: {reason}")]
    Refused { entry: String, reason: String },
    #[error("the folder exceeds the master's {cap} cap of {limit} ({actual})")]
    TooLarge {
        cap: &'static str,
        limit: u64,
        actual: u64,
    },
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A packed folder.
#[derive(Debug)]
pub struct Packed {
    pub body: Vec<u8>,
    /// Files and links in the archive.
    pub entries: u64,
    /// Bytes of the files.
    pub bytes: u64,
    pub compose: &'static str,
}

pub fn pack(root: &Path, caps: &Caps) -> Result<Packed, PackError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PackError::Io { path, source }
    };
    if !root.is_dir() {
        return Err(PackError::NotAFolder(root.to_owned()));
    }
    let real_root = fs::canonicalize(root).map_err(io(root))?;
    let compose = COMPOSE_FILES
        .into_iter()
        .find(|name| fs::symlink_metadata(root.join(name)).is_ok_and(|m| m.file_type().is_file()))
        .ok_or_else(|| PackError::MissingCompose(root.to_owned()))?;
    let mut packer = Packer {
        root,
        real_root,
        caps,
        builder: tar::Builder::new(Vec::new()),
        entries: 0,
        bytes: 0,
    };
    packer.folder(Path::new(""))?;
    let tar = packer.builder.into_inner().map_err(io(root))?;
    let (entries, bytes) = (packer.entries, packer.bytes);
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&tar).map_err(io(root))?;
    let body = gz.finish().map_err(io(root))?;
    let (raw, packed) = (tar.len() as u64, body.len() as u64);
    if packed > caps.compressed_bytes {
        return Err(PackError::TooLarge {
            cap: "compressed size",
            limit: caps.compressed_bytes,
            actual: packed,
        });
    }
    if raw > RATIO_FLOOR_BYTES && raw > packed.saturating_mul(caps.ratio) {
        return Err(PackError::TooLarge {
            cap: "compression ratio",
            limit: caps.ratio,
            actual: raw / packed.max(1),
        });
    }
    Ok(Packed {
        body,
        entries,
        bytes,
        compose,
    })
}

struct Packer<'a> {
    root: &'a Path,
    real_root: PathBuf,
    caps: &'a Caps,
    builder: tar::Builder<Vec<u8>>,
    entries: u64,
    bytes: u64,
}

impl Packer<'_> {
    /// Packs the folder at `rel` (relative to the root), its entries in name order.
    fn folder(&mut self, rel: &Path) -> Result<(), PackError> {
        let dir = self.root.join(rel);
        let io = |source| PackError::Io {
            path: dir.clone(),
            source,
        };
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let shown = rel.to_string_lossy().into_owned();
            let refuse = |reason: &str| PackError::Refused {
                entry: shown.clone(),
                reason: reason.to_owned(),
            };
            let Some(name) = name.to_str() else {
                return Err(refuse("the name is not UTF-8"));
            };
            if name.eq_ignore_ascii_case(".git") {
                continue;
            }
            if name.contains('\\') {
                return Err(refuse("the master does not accept a backslash in names"));
            }
            let path = self.root.join(&rel);
            let meta = fs::symlink_metadata(&path).map_err(|source| PackError::Io {
                path: path.clone(),
                source,
            })?;
            let kind = meta.file_type();
            if kind.is_dir() {
                self.folder(&rel)?;
            } else if kind.is_file() {
                self.file(&rel, &path, &meta)?;
            } else if kind.is_symlink() {
                self.link(&rel, &path)?;
            } else if kind.is_fifo() {
                return Err(refuse("fifos are not allowed"));
            } else if kind.is_socket() {
                return Err(refuse("sockets are not allowed"));
            } else {
                return Err(refuse("device files are not allowed"));
            }
        }
        Ok(())
    }

    fn count(&mut self) -> Result<(), PackError> {
        self.entries += 1;
        if self.entries > self.caps.files {
            return Err(PackError::TooLarge {
                cap: "file count",
                limit: self.caps.files,
                actual: self.entries,
            });
        }
        Ok(())
    }

    fn file(&mut self, rel: &Path, path: &Path, meta: &fs::Metadata) -> Result<(), PackError> {
        self.count()?;
        let size = meta.len();
        if size > self.caps.file_bytes {
            return Err(PackError::TooLarge {
                cap: "file size",
                limit: self.caps.file_bytes,
                actual: size,
            });
        }
        self.bytes += size;
        if self.bytes > self.caps.uncompressed_bytes {
            return Err(PackError::TooLarge {
                cap: "uncompressed size",
                limit: self.caps.uncompressed_bytes,
                actual: self.bytes,
            });
        }
        let io = |source| PackError::Io {
            path: path.to_owned(),
            source,
        };
        let data = fs::read(path).map_err(io)?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        let executable = meta.permissions().mode() & 0o111 != 0;
        header.set_mode(if executable { 0o755 } else { 0o644 });
        header.set_mtime(0);
        self.builder
            .append_data(&mut header, rel, data.as_slice())
            .map_err(io)
    }

    fn link(&mut self, rel: &Path, path: &Path) -> Result<(), PackError> {
        self.count()?;
        let refuse = |reason: &str| PackError::Refused {
            entry: rel.to_string_lossy().into_owned(),
            reason: reason.to_owned(),
        };
        let io = |source| PackError::Io {
            path: path.to_owned(),
            source,
        };
        let target = fs::read_link(path).map_err(io)?;
        let Some(text) = target.to_str() else {
            return Err(refuse("the link target is not UTF-8"));
        };
        if text.is_empty() {
            return Err(refuse("symbolic link without a target"));
        }
        if target.is_absolute() {
            return Err(refuse(&format!(
                "symbolic link to {text} leaves the folder (absolute target)"
            )));
        }
        if text
            .split('/')
            .any(|part| part.eq_ignore_ascii_case(".git"))
        {
            return Err(refuse("the link target names `.git`"));
        }
        if !self.stays_inside(rel, &target, path) {
            return Err(refuse(&format!(
                "symbolic link to {text} leaves the folder"
            )));
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        header.set_mtime(0);
        self.builder
            .append_link(&mut header, rel, &target)
            .map_err(io)
    }

    /// Whether the link at `rel` stays in the folder: where it exists, by where the system
    /// resolves it; a dangling link by its text, from the link's own folder.
    fn stays_inside(&self, rel: &Path, target: &Path, path: &Path) -> bool {
        if let Ok(real) = fs::canonicalize(path) {
            return real.starts_with(&self.real_root);
        }
        let mut depth: usize = rel.components().count().saturating_sub(1);
        for part in target.components() {
            match part {
                Component::ParentDir if depth == 0 => return false,
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn app() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("compose.yaml"), "services: {}\n").unwrap();
        fs::create_dir_all(dir.path().join("web/.git")).unwrap();
        fs::write(dir.path().join("web/.git/HEAD"), "ref\n").unwrap();
        fs::write(dir.path().join("web/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            dir.path().join("web/run.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink("../compose.yaml", dir.path().join("web/compose")).unwrap();
        dir
    }

    fn entries(body: &[u8]) -> Vec<(String, u32)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(body));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                (path, e.header().mode().unwrap())
            })
            .collect()
    }

    #[test]
    fn packs_files_and_inner_links_without_git_and_repeatably() {
        let dir = app();
        let packed = pack(dir.path(), &Caps::default()).unwrap();
        assert_eq!(packed.compose, "compose.yaml");
        assert_eq!(packed.entries, 3);
        assert_eq!(
            entries(&packed.body),
            [
                ("compose.yaml".to_owned(), 0o644),
                ("web/compose".to_owned(), 0o777),
                ("web/run.sh".to_owned(), 0o755),
            ]
        );
        let again = pack(dir.path(), &Caps::default()).unwrap();
        assert_eq!(packed.body, again.body);
    }

    fn refusal(dir: &Path) -> String {
        match pack(dir, &Caps::default()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("packed"),
        }
    }

    #[test]
    fn refuses_what_the_master_would() {
        let empty = tempfile::tempdir().unwrap();
        fs::write(empty.path().join("Dockerfile"), "FROM x\n").unwrap();
        assert!(refusal(empty.path()).contains("no compose file at the root"));

        let cases: [(&str, &str, &str); 4] = [
            ("/etc/passwd", "out", "absolute target"),
            ("../../../../../../etc", "up", "leaves the folder"),
            ("../nowhere/x", "dangling", "leaves the folder"),
            ("web/.git/HEAD", "g", "`.git`"),
        ];
        for (target, name, needle) in cases {
            let dir = app();
            symlink(target, dir.path().join(name)).unwrap();
            let message = refusal(dir.path());
            assert!(message.contains(name), "{message}");
            assert!(message.contains(needle), "{message}");
        }
        let dir = app();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join("web/away")).unwrap();
        assert!(refusal(dir.path()).contains("web/away"));
    }

    #[test]
    fn caps_are_named() {
        let dir = app();
        let small = Caps {
            files: 2,
            ..Caps::default()
        };
        assert!(refusal_with(dir.path(), &small).contains("file count cap of 2"));
        let small = Caps {
            file_bytes: 5,
            ..Caps::default()
        };
        assert!(refusal_with(dir.path(), &small).contains("file size cap of 5"));
        fs::write(dir.path().join("zeros"), vec![0u8; 4 << 20]).unwrap();
        assert!(refusal_with(dir.path(), &Caps::default()).contains("compression ratio"));
    }

    fn refusal_with(dir: &Path, caps: &Caps) -> String {
        pack(dir, caps).map(|_| ()).unwrap_err().to_string()
    }
}
