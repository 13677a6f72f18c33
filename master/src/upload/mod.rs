//! Hostile-input-safe reading of an uploaded `tar.gz` into an in-memory tree, under size caps.
//!
//! Nothing touches the disk here: the archive is decompressed and checked entry by entry, and only
//! a fully validated [`UploadTree`] leaves this module, so a rejected upload leaves nothing behind.
//!
//! Accepted entries: regular files (the executable bit is kept), directories (git keeps no empty
//! directories, so they only shape paths), symbolic links whose target, resolved through the
//! other links of the archive, stays inside the tree (kept as git symlinks) and hard links to a
//! regular file earlier in the same archive (stored as a copy of that file, counted against the
//! uncompressed cap). Everything else is rejected naming the entry: absolute paths, `..`, `.git`
//! components, links leaving the tree, devices, fifos, sparse files.
//!
//! The body may hold several concatenated gzip members (as `tar -z` accepts); anything after the
//! last member, or data after the tar end-of-archive blocks, is rejected.

use std::collections::BTreeMap;
use std::io::{self, Read};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

mod links;

pub use links::MAX_LINK_DEPTH;
use links::{check_links_resolve_inside, check_symlink};

/// The compose file names looked for at the root of an upload, in the order the worker reads them.
pub const COMPOSE_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];

/// Caps on an upload. A value is exceeded when the upload is strictly larger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Size of the `tar.gz` body as sent.
    pub max_compressed_bytes: u64,
    /// Sum of the sizes of all files once decompressed.
    pub max_uncompressed_bytes: u64,
    /// Number of entries (files, directories, links).
    pub max_files: u64,
    /// Size of any one file.
    pub max_file_bytes: u64,
    /// Decompressed stream size divided by compressed size; only checked once the decompressed
    /// stream passes [`RATIO_FLOOR_BYTES`], so small, very compressible uploads are fine.
    pub max_ratio: u64,
    /// Uploads read, checked and committed at once; more wait for a slot before their body is
    /// read, so the master's memory stays within this many times the two size caps.
    pub max_concurrent: u64,
}

/// Decompressed size below which the compression ratio is not checked.
pub const RATIO_FLOOR_BYTES: u64 = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_compressed_bytes: 64 * 1024 * 1024,
            max_uncompressed_bytes: 256 * 1024 * 1024,
            max_files: 10_000,
            max_file_bytes: 64 * 1024 * 1024,
            max_ratio: 100,
            max_concurrent: 2,
        }
    }
}

/// Which cap an upload exceeded; its `Display` names it as the API error does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    CompressedSize,
    UncompressedSize,
    FileCount,
    FileSize,
    CompressionRatio,
}

impl std::fmt::Display for Cap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cap::CompressedSize => "compressed size",
            Cap::UncompressedSize => "uncompressed size",
            Cap::FileCount => "file count",
            Cap::FileSize => "file size",
            Cap::CompressionRatio => "compression ratio",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload exceeds the {cap} cap of {limit}")]
    TooLarge { cap: Cap, limit: u64 },
    #[error("rejected entry {entry:?}: {reason}")]
    Hostile { entry: String, reason: &'static str },
    #[error("not a valid tar.gz archive: {0}")]
    Malformed(String),
    #[error("no compose file at the root of the upload (looked for {})", COMPOSE_FILES.join(", "))]
    MissingCompose,
}

/// One entry of a validated upload, with a normalised `/`-separated relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEntry {
    File { data: Vec<u8>, executable: bool },
    Symlink { target: String },
}

/// A validated upload: relative path -> entry. Paths never hold `.`, `..`, empty components or
/// `.git`, and no path is both a file and a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadTree {
    pub entries: BTreeMap<String, TreeEntry>,
}

impl UploadTree {
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match e {
                TreeEntry::File { data, .. } => data.len() as u64,
                TreeEntry::Symlink { target } => target.len() as u64,
            })
            .sum()
    }

    /// The compose file found at the root, if any.
    pub fn compose_file(&self) -> Option<&'static str> {
        COMPOSE_FILES
            .into_iter()
            .find(|name| matches!(self.entries.get(*name), Some(TreeEntry::File { .. })))
    }
}

/// Counts and caps the decompressed stream (a gzip bomb stops here, whatever the tar says).
struct Capped<R> {
    inner: R,
    read: u64,
    limit: u64,
    compressed_len: u64,
    max_ratio: u64,
    exceeded: Option<Cap>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            self.exceeded = Some(Cap::UncompressedSize);
        } else if self.read > RATIO_FLOOR_BYTES
            && self.read > self.compressed_len.saturating_mul(self.max_ratio)
        {
            self.exceeded = Some(Cap::CompressionRatio);
        }
        if self.exceeded.is_some() {
            return Err(io::Error::other("upload cap exceeded"));
        }
        Ok(n)
    }
}

/// Tar headers and padding on top of the file bytes the decompressed stream may carry (three
/// blocks per entry, plus one 10 KiB tar record of end padding).
fn stream_allowance(limits: &Limits) -> u64 {
    limits
        .max_uncompressed_bytes
        .saturating_add(limits.max_files.saturating_add(2).saturating_mul(3 * 512))
        .saturating_add(TAR_RECORD_BYTES)
}

/// GNU tar's default record size: archives are padded with zeros up to a multiple of it.
const TAR_RECORD_BYTES: u64 = 20 * 512;

/// Reads and validates a `tar.gz` upload. Pure: it allocates memory and nothing else.
pub fn read_upload(body: &[u8], limits: &Limits) -> Result<UploadTree, UploadError> {
    if body.len() as u64 > limits.max_compressed_bytes {
        return Err(UploadError::TooLarge {
            cap: Cap::CompressedSize,
            limit: limits.max_compressed_bytes,
        });
    }
    let mut capped = Capped {
        inner: MultiGzDecoder::new(body),
        read: 0,
        limit: stream_allowance(limits),
        compressed_len: body.len() as u64,
        max_ratio: limits.max_ratio,
        exceeded: None,
    };
    let result = read_tar(&mut capped, limits).and_then(|tree| {
        // The tar reader stops at the end-of-archive block: the rest of the stream (through the
        // last gzip member) must be padding, so nothing is dropped silently.
        rest_is_padding(&mut capped)?;
        Ok(tree)
    });
    if let Some(cap) = capped.exceeded {
        let limit = match cap {
            Cap::CompressionRatio => limits.max_ratio,
            _ => limits.max_uncompressed_bytes,
        };
        return Err(UploadError::TooLarge { cap, limit });
    }
    let tree = result?;
    if tree.compose_file().is_none() {
        return Err(UploadError::MissingCompose);
    }
    Ok(tree)
}

/// Reads the decompressed stream to its end: only zeros may follow the end-of-archive block, and
/// the gzip layer rejects bytes after its last member.
fn rest_is_padding<R: Read>(reader: &mut R) -> Result<(), UploadError> {
    let mut buf = [0u8; 8192];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| UploadError::Malformed(format!("after the tar end-of-archive: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(UploadError::Malformed(
                "data after the tar end-of-archive blocks (concatenated archives are not accepted)"
                    .into(),
            ));
        }
    }
}

fn read_tar<R: Read>(reader: R, limits: &Limits) -> Result<UploadTree, UploadError> {
    let mut archive = tar::Archive::new(reader);
    let malformed = |e: io::Error| UploadError::Malformed(e.to_string());
    let mut tree = UploadTree::default();
    let mut dirs: BTreeMap<String, ()> = BTreeMap::new();
    let mut count: u64 = 0;
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        count += 1;
        if count > limits.max_files {
            return Err(UploadError::TooLarge {
                cap: Cap::FileCount,
                limit: limits.max_files,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw)
            .chars()
            .take(200)
            .collect::<String>();
        let hostile = |reason| UploadError::Hostile {
            entry: shown.clone(),
            reason,
        };
        let path = normalise_path(&raw).map_err(hostile)?;
        if kind.is_dir() {
            if let Some(path) = path {
                dirs.insert(path, ());
            }
            continue;
        }
        let Some(path) = path else {
            return Err(hostile("the archive root can only be a directory"));
        };
        let item = if kind.is_file() || kind.is_contiguous() {
            let size = entry.size();
            if size > limits.max_file_bytes {
                return Err(UploadError::TooLarge {
                    cap: Cap::FileSize,
                    limit: limits.max_file_bytes,
                });
            }
            total = total.saturating_add(size);
            if total > limits.max_uncompressed_bytes {
                return Err(UploadError::TooLarge {
                    cap: Cap::UncompressedSize,
                    limit: limits.max_uncompressed_bytes,
                });
            }
            let executable = entry.header().mode().map_err(malformed)? & 0o111 != 0;
            let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 20));
            entry.read_to_end(&mut data).map_err(malformed)?;
            TreeEntry::File { data, executable }
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| hostile("symbolic link without a target"))?;
            let target = std::str::from_utf8(&target)
                .map_err(|_| hostile("link target is not UTF-8"))?
                .to_owned();
            check_symlink(&target).map_err(hostile)?;
            TreeEntry::Symlink { target }
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| hostile("hard link without a target"))?;
            let target = normalise_path(&target)
                .map_err(|_| hostile("hard link leaves the tree"))?
                .ok_or_else(|| hostile("hard link to the archive root"))?;
            match tree.entries.get(&target) {
                Some(file @ TreeEntry::File { data, .. }) => {
                    // The copy costs as much as the file: count it before making it.
                    total = total.saturating_add(data.len() as u64);
                    if total > limits.max_uncompressed_bytes {
                        return Err(UploadError::TooLarge {
                            cap: Cap::UncompressedSize,
                            limit: limits.max_uncompressed_bytes,
                        });
                    }
                    file.clone()
                }
                _ => {
                    return Err(hostile(
                        "hard link to something that is not an earlier file",
                    ));
                }
            }
        } else if kind.is_character_special() || kind.is_block_special() {
            return Err(hostile("device files are not allowed"));
        } else if kind.is_fifo() {
            return Err(hostile("fifos are not allowed"));
        } else {
            return Err(hostile("unsupported entry type"));
        };
        tree.entries.insert(path, item);
    }
    // A path may not be both a file (or link) and a directory.
    for path in tree.entries.keys() {
        let mut prefix = path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if tree.entries.contains_key(parent) {
                return Err(UploadError::Hostile {
                    entry: path.clone(),
                    reason: "a parent of this path is a file or link",
                });
            }
            prefix = parent;
        }
        if dirs.contains_key(path) {
            return Err(UploadError::Hostile {
                entry: path.clone(),
                reason: "path is both a directory and a file",
            });
        }
    }
    check_links_resolve_inside(&tree)?;
    Ok(tree)
}

/// Normalises an archive path to `a/b/c`; `None` for the root itself (`.` or `./`).
/// Longest path accepted, in bytes (Linux's `PATH_MAX`): a longer one could not be checked out,
/// and its thousands of components would make every later walk of the tree deep.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest path component accepted, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Most components in one path. Within `PATH_MAX` a path can still nest about 2,000
/// directories, and the code store's tree writing recurses once per level: a debug-built master
/// overflowed its 2 MiB stack at about 1,000, so berth keeps a wide margin below that.
pub const MAX_PATH_DEPTH: usize = 256;

fn normalise_path(raw: &[u8]) -> Result<Option<String>, &'static str> {
    if raw.len() > MAX_PATH_BYTES {
        return Err("path is longer than 4096 bytes (PATH_MAX)");
    }
    let s = std::str::from_utf8(raw).map_err(|_| "path is not UTF-8")?;
    if s.starts_with('/') {
        return Err("absolute paths are not allowed");
    }
    if s.contains('\0') || s.contains('\\') {
        return Err("path holds a NUL or a backslash");
    }
    let mut parts = Vec::new();
    for part in s.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("`..` is not allowed in paths"),
            p if p.len() > MAX_NAME_BYTES => {
                return Err("a path component is longer than 255 bytes (NAME_MAX)");
            }
            p if p.eq_ignore_ascii_case(".git") => return Err("`.git` is not allowed in paths"),
            p => parts.push(p),
        }
    }
    if parts.len() > MAX_PATH_DEPTH {
        return Err("path has more than 256 components");
    }
    if parts.is_empty() {
        Ok(None)
    } else {
        Ok(Some(parts.join("/")))
    }
}

#[cfg(test)]
pub(crate) mod tests;
