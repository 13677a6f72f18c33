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

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

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
fn normalise_path(raw: &[u8]) -> Result<Option<String>, &'static str> {
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
            p if p.eq_ignore_ascii_case(".git") => return Err("`.git` is not allowed in paths"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        Ok(None)
    } else {
        Ok(Some(parts.join("/")))
    }
}

/// The textual rules of a symbolic link target; where it leads is checked once the whole tree is
/// known ([`check_links_resolve_inside`]).
fn check_symlink(target: &str) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("symbolic link without a target");
    }
    if target.starts_with('/') {
        return Err("symbolic link leaves the tree (absolute target)");
    }
    if target.contains('\0') {
        return Err("link target holds a NUL");
    }
    if target
        .split('/')
        .any(|part| part.eq_ignore_ascii_case(".git"))
    {
        return Err("link target names `.git`");
    }
    Ok(())
}

/// Most symbolic links followed, one inside another, to resolve one link (Linux's MAXSYMLINKS).
pub const MAX_LINK_DEPTH: usize = 40;

/// The upload's paths as a tree of components, to resolve links the way the kernel will once
/// the tree is checked out: each component is looked up, and a link found on the way is replaced
/// by where it leads.
struct PathTree<'a> {
    nodes: Vec<PathNode<'a>>,
}

struct PathNode<'a> {
    parent: usize,
    children: HashMap<&'a str, usize>,
    /// The path and target of a symbolic link.
    link: Option<(&'a str, &'a str)>,
}

/// Where a path resolves to: a node of the tree, then `extra` components that are not in it
/// (a dangling path; a `..` first climbs back out of those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    node: usize,
    extra: usize,
}

const ROOT: usize = 0;

enum Resolution {
    InProgress,
    /// Where the link leads, and how many links deep its resolution went (itself included).
    Done(Place, usize),
}

impl<'a> PathTree<'a> {
    fn new(tree: &'a UploadTree) -> Self {
        let mut this = PathTree {
            nodes: vec![PathNode {
                parent: ROOT,
                children: HashMap::new(),
                link: None,
            }],
        };
        for (path, entry) in &tree.entries {
            let mut node = ROOT;
            for part in path.split('/') {
                node = match this.nodes[node].children.get(part) {
                    Some(&child) => child,
                    None => {
                        let child = this.nodes.len();
                        this.nodes.push(PathNode {
                            parent: node,
                            children: HashMap::new(),
                            link: None,
                        });
                        this.nodes[node].children.insert(part, child);
                        child
                    }
                };
            }
            if let TreeEntry::Symlink { target } = entry {
                this.nodes[node].link = Some((path.as_str(), target.as_str()));
            }
        }
        this
    }

    /// Where the link at `node` finally leads, following the links on its way (memoised), and
    /// how deep that went. `depth` counts the links being resolved around this one.
    fn resolve(
        &self,
        node: usize,
        depth: usize,
        memo: &mut HashMap<usize, Resolution>,
    ) -> Result<(Place, usize), UploadError> {
        let (path, target) = self.nodes[node].link.expect("resolve is called on links");
        let hostile = |reason| UploadError::Hostile {
            entry: path.chars().take(200).collect(),
            reason,
        };
        let too_deep = || hostile("too many levels of symbolic links");
        match memo.get(&node) {
            Some(Resolution::Done(place, levels)) if depth + levels <= MAX_LINK_DEPTH => {
                return Ok((*place, *levels));
            }
            Some(Resolution::Done(..)) => return Err(too_deep()),
            Some(Resolution::InProgress) => return Err(hostile("symbolic link loop")),
            None if depth >= MAX_LINK_DEPTH => return Err(too_deep()),
            None => {}
        }
        memo.insert(node, Resolution::InProgress);
        let mut at = Place {
            node: self.nodes[node].parent,
            extra: 0,
        };
        let mut inner = 0;
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." if at.extra > 0 => at.extra -= 1,
                ".." if at.node == ROOT => return Err(hostile("symbolic link leaves the tree")),
                ".." => at.node = self.nodes[at.node].parent,
                _ if at.extra > 0 => at.extra += 1,
                name => match self.nodes[at.node].children.get(name) {
                    None => at.extra = 1,
                    Some(&child) if self.nodes[child].link.is_some() => {
                        let (place, levels) = self.resolve(child, depth + 1, memo)?;
                        at = place;
                        inner = inner.max(levels);
                    }
                    Some(&child) => at.node = child,
                },
            }
        }
        memo.insert(node, Resolution::Done(at, inner + 1));
        Ok((at, inner + 1))
    }
}

/// Every symbolic link, resolved through the links already in the tree, stays inside it (a
/// `d/up -> ..` is fine; `x -> d/up/../etc` is not).
fn check_links_resolve_inside(tree: &UploadTree) -> Result<(), UploadError> {
    let paths = PathTree::new(tree);
    let mut memo = HashMap::new();
    for (node, n) in paths.nodes.iter().enumerate() {
        if n.link.is_some() {
            paths.resolve(node, 0, &mut memo)?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    /// What a test archive entry is.
    pub(crate) enum Item<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Fifo(&'a str),
        CharDev(&'a str),
    }

    /// Builds a tar.gz, writing paths raw so hostile names survive.
    pub(crate) fn targz(items: &[Item<'_>]) -> Vec<u8> {
        gzip(&tar_bytes(items))
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// The uncompressed tar of `items`.
    fn tar_bytes(items: &[Item<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut h = tar::Header::new_gnu();
            let (path, kind, data, mode, link): (&str, tar::EntryType, &[u8], u32, Option<&str>) =
                match *item {
                    Item::File(p, d, m) => (p, tar::EntryType::Regular, d, m, None),
                    Item::Dir(p) => (p, tar::EntryType::Directory, b"", 0o755, None),
                    Item::Symlink(p, t) => (p, tar::EntryType::Symlink, b"", 0o777, Some(t)),
                    Item::Hardlink(p, t) => (p, tar::EntryType::Link, b"", 0o644, Some(t)),
                    Item::Fifo(p) => (p, tar::EntryType::Fifo, b"", 0o644, None),
                    Item::CharDev(p) => (p, tar::EntryType::Char, b"", 0o644, None),
                };
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            let name = &mut h.as_gnu_mut().unwrap().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                let l = &mut h.as_gnu_mut().unwrap().linkname;
                l[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            builder.append(&h, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    const COMPOSE: Item<'static> = Item::File("compose.yaml", b"services: {}\n", 0o644);

    #[test]
    fn good_upload_keeps_modes_links_and_drops_dirs() {
        let body = targz(&[
            Item::Dir("./"),
            Item::File("./compose.yaml", b"services: {}\n", 0o644),
            Item::Dir("app"),
            Item::File("app/run.sh", b"#!/bin/sh\n", 0o755),
            Item::Symlink("app/link", "../compose.yaml"),
            Item::Hardlink("app/copy", "app/run.sh"),
        ]);
        let tree = read_upload(&body, &Limits::default()).unwrap();
        assert_eq!(tree.compose_file(), Some("compose.yaml"));
        let keys: Vec<_> = tree.entries.keys().cloned().collect();
        assert_eq!(keys, ["app/copy", "app/link", "app/run.sh", "compose.yaml"]);
        assert_eq!(
            tree.entries["app/run.sh"],
            TreeEntry::File {
                data: b"#!/bin/sh\n".to_vec(),
                executable: true
            }
        );
        assert_eq!(tree.entries["app/copy"], tree.entries["app/run.sh"]);
        assert!(matches!(
            tree.entries["compose.yaml"],
            TreeEntry::File {
                executable: false,
                ..
            }
        ));
    }

    #[test]
    fn hostile_entries_are_named() {
        let cases: Vec<(Item<'_>, &str, &str)> = vec![
            (
                Item::File("/etc/passwd", b"x", 0o644),
                "/etc/passwd",
                "absolute",
            ),
            (Item::File("a/../../x", b"x", 0o644), "a/../../x", "`..`"),
            (Item::File("../x", b"x", 0o644), "../x", "`..`"),
            (
                Item::File(".git/config", b"x", 0o644),
                ".git/config",
                "`.git`",
            ),
            (Item::Symlink("l", "/etc/passwd"), "l", "leaves the tree"),
            (Item::Symlink("a/l", "../../x"), "a/l", "leaves the tree"),
            (Item::Hardlink("h", "/etc/passwd"), "h", "hard link"),
            (Item::Hardlink("h", "missing"), "h", "not an earlier file"),
            (Item::Fifo("f"), "f", "fifos"),
            (Item::CharDev("d"), "d", "device"),
        ];
        for (item, entry, reason) in cases {
            let body = targz(&[COMPOSE, item]);
            match read_upload(&body, &Limits::default()) {
                Err(UploadError::Hostile {
                    entry: e,
                    reason: r,
                }) => {
                    assert_eq!(e, entry);
                    assert!(r.contains(reason), "{entry}: {r}");
                }
                other => panic!("{entry}: {other:?}"),
            }
        }
    }

    #[test]
    fn caps_are_named() {
        let small = Limits {
            max_files: 2,
            max_file_bytes: 20,
            max_uncompressed_bytes: 30,
            ..Limits::default()
        };
        let check = |items: &[Item<'_>], limits: &Limits, cap: Cap| match read_upload(
            &targz(items),
            limits,
        ) {
            Err(UploadError::TooLarge { cap: c, .. }) => assert_eq!(c, cap),
            other => panic!("{cap}: {other:?}"),
        };
        check(
            &[
                COMPOSE,
                Item::File("a", b"1", 0o644),
                Item::File("b", b"2", 0o644),
            ],
            &small,
            Cap::FileCount,
        );
        check(
            &[Item::File("compose.yaml", &[b'x'; 21], 0o644)],
            &small,
            Cap::FileSize,
        );
        let total = Limits {
            max_file_bytes: 100,
            ..small
        };
        check(
            &[
                Item::File("compose.yaml", &[b'x'; 20], 0o644),
                Item::File("b", &[b'y'; 20], 0o644),
            ],
            &total,
            Cap::UncompressedSize,
        );
        let zeros = vec![0u8; 4 * 1024 * 1024];
        check(
            &[COMPOSE, Item::File("zeros", &zeros, 0o644)],
            &Limits {
                max_ratio: 10,
                ..Limits::default()
            },
            Cap::CompressionRatio,
        );
        let body = targz(&[COMPOSE]);
        let tight = Limits {
            max_compressed_bytes: body.len() as u64 - 1,
            ..Limits::default()
        };
        assert!(matches!(
            read_upload(&body, &tight),
            Err(UploadError::TooLarge {
                cap: Cap::CompressedSize,
                ..
            })
        ));
    }

    #[test]
    fn compose_required_and_garbage_rejected() {
        let body = targz(&[Item::File("Dockerfile", b"FROM scratch\n", 0o644)]);
        assert!(matches!(
            read_upload(&body, &Limits::default()),
            Err(UploadError::MissingCompose)
        ));
        let nested = targz(&[Item::File("sub/compose.yaml", b"x", 0o644)]);
        assert!(matches!(
            read_upload(&nested, &Limits::default()),
            Err(UploadError::MissingCompose)
        ));
        assert!(matches!(
            read_upload(b"not gzip at all", &Limits::default()),
            Err(UploadError::Malformed(_))
        ));
    }

    #[test]
    fn file_and_directory_clash_rejected() {
        let body = targz(&[
            COMPOSE,
            Item::File("a", b"x", 0o644),
            Item::File("a/b", b"y", 0o644),
        ]);
        assert!(matches!(
            read_upload(&body, &Limits::default()),
            Err(UploadError::Hostile { .. })
        ));
    }

    fn rejected(items: &[Item<'_>]) -> (String, &'static str) {
        match read_upload(&targz(items), &Limits::default()) {
            Err(UploadError::Hostile { entry, reason }) => (entry, reason),
            other => panic!("expected a hostile entry: {other:?}"),
        }
    }

    #[test]
    fn symlinks_are_resolved_through_the_other_links() {
        // Inside the tree, whatever the order of the entries and however many hops.
        let body = targz(&[
            Item::Symlink("x", "d/up/compose.yaml"),
            COMPOSE,
            Item::Symlink("d/up", ".."),
            Item::Symlink("y", "x"),
            Item::Symlink("e/f/g", "../../d/up/d/up/e"),
            Item::Symlink("dangling", "nowhere/../compose.yaml"),
        ]);
        let tree = read_upload(&body, &Limits::default()).unwrap();
        assert_eq!(tree.entries.len(), 6);

        // The audit's chain: `d/up` is the root, so each `..` after it climbs out.
        let chain = format!("{}{}etc/passwd", "d/up/".repeat(6), "../".repeat(6));
        let (entry, reason) = rejected(&[
            COMPOSE,
            Item::Symlink("d/up", ".."),
            Item::Symlink("passwd", &chain),
        ]);
        assert_eq!(entry, "passwd");
        assert!(reason.contains("leaves the tree"), "{reason}");
        // One hop is enough, and the link may come before the one it goes through.
        let (entry, _) = rejected(&[
            COMPOSE,
            Item::Symlink("a/out", "../d/up/.."),
            Item::Symlink("d/up", ".."),
        ]);
        assert_eq!(entry, "a/out");
        // Through a link to a deeper directory and back out past the root.
        let (entry, _) = rejected(&[
            COMPOSE,
            Item::File("a/b/c/f", b"x", 0o644),
            Item::Symlink("deep", "a/b/c"),
            Item::Symlink("z", "deep/../../../.."),
        ]);
        assert_eq!(entry, "z");
        // A link reaching an escaping link is rejected too (named after the escaping one).
        let (entry, _) = rejected(&[
            COMPOSE,
            Item::Symlink("b/out", "../.."),
            Item::Symlink("via", "b/out"),
        ]);
        assert_eq!(entry, "b/out");

        let (_, reason) = rejected(&[
            COMPOSE,
            Item::Symlink("l1", "l2"),
            Item::Symlink("l2", "l1"),
        ]);
        assert!(reason.contains("loop"), "{reason}");
        // A chain of MAX_LINK_DEPTH links resolves; one more is too deep, whether the check
        // meets the chain at its start (`l00 -> l01 -> ...`) or at its end (`... -> l01 -> l00`,
        // where the memoised inner links carry their depth).
        let names: Vec<String> = (0..=MAX_LINK_DEPTH + 1)
            .map(|i| format!("l{i:02}"))
            .collect();
        let chain = |n: usize, descending: bool| {
            let mut items = vec![COMPOSE];
            items.extend((0..n).map(|i| {
                if descending {
                    Item::Symlink(&names[i + 1], &names[i])
                } else {
                    Item::Symlink(&names[i], &names[i + 1])
                }
            }));
            items
        };
        for descending in [false, true] {
            let ok = targz(&chain(MAX_LINK_DEPTH, descending));
            assert!(read_upload(&ok, &Limits::default()).is_ok(), "{descending}");
            let (_, reason) = rejected(&chain(MAX_LINK_DEPTH + 1, descending));
            assert!(reason.contains("too many levels"), "{descending}: {reason}");
        }
    }

    #[test]
    fn hard_link_copies_count_against_the_uncompressed_cap() {
        let limits = Limits {
            max_uncompressed_bytes: 60,
            ..Limits::default()
        };
        let file = [b'x'; 20];
        let ok = targz(&[
            Item::File("compose.yaml", b"services: {}\n", 0o644),
            Item::File("big", &file, 0o644),
            Item::Hardlink("c1", "big"),
        ]);
        assert!(read_upload(&ok, &limits).is_ok());
        let over = targz(&[
            Item::File("compose.yaml", b"services: {}\n", 0o644),
            Item::File("big", &file, 0o644),
            Item::Hardlink("c1", "big"),
            Item::Hardlink("c2", "big"),
        ]);
        match read_upload(&over, &limits) {
            Err(UploadError::TooLarge { cap, limit }) => {
                assert_eq!((cap, limit), (Cap::UncompressedSize, 60));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_gzip_member_is_read_and_trailing_bytes_rejected() {
        let raw = tar_bytes(&[
            COMPOSE,
            Item::File("web/Dockerfile", b"FROM x\n", 0o644),
            Item::File("web/index.html", b"hi\n", 0o644),
        ]);
        // Split on a header boundary, as `cat a.gz b.gz` or bgzip would.
        let mut multi = gzip(&raw[..1024]);
        multi.extend(gzip(&raw[1024..]));
        let tree = read_upload(&multi, &Limits::default()).unwrap();
        let keys: Vec<_> = tree.entries.keys().cloned().collect();
        assert_eq!(keys, ["compose.yaml", "web/Dockerfile", "web/index.html"]);

        let mut junk = gzip(&raw);
        junk.extend(b"JUNK".repeat(100));
        assert!(matches!(
            read_upload(&junk, &Limits::default()),
            Err(UploadError::Malformed(_))
        ));
        // A second archive after the first one's end would be dropped by a tar reader.
        let mut two = gzip(&raw);
        two.extend(gzip(&tar_bytes(&[Item::File("extra", b"x", 0o644)])));
        match read_upload(&two, &Limits::default()) {
            Err(UploadError::Malformed(m)) => assert!(m.contains("end-of-archive"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
