//! The write side of git's smart protocol (`git push` over HTTP, stateless RPC): the
//! receive-pack advertisement, the request's commands and pack, and the `report-status` answer.
//!
//! A push is held to the rules of a tar upload without a second copy of them: the received pack
//! is checked for sizes before it is inflated, indexed into a quarantine directory inside the
//! repository (not visible to readers), and the pushed commit's tree is walked and handed, as an
//! archive, to [`read_upload`], which applies the caps, the hostile-path rules and the compose
//! rule. The accepted tree must also hash to the pushed tree (so nothing was dropped or
//! normalised away). Only then may the caller move the objects in and the ref (see
//! [`super::CodeStore::accept_push`]); a refused push leaves `main` where it was.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use git2::{ObjectType, Odb, Oid, Repository};

use super::protocol::{ProtocolError, flush, pkt};
use super::{MAIN_REF, pack, tree_oid};
use crate::upload::{Cap, Limits, UploadError, read_upload};

/// Capabilities offered to `git push`. `no-thin` makes every pack self-contained, so packs can
/// be stored and later joined as they are.
const CAPABILITIES: &str = "report-status side-band-64k quiet ofs-delta no-thin";

/// The body of `GET info/refs?service=git-receive-pack`; `repo` is `None` for an instance
/// without code yet (the push is then answered with a clear refusal).
pub fn advertise(repo: Option<&Repository>, agent: &str) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    pkt(&mut out, b"# service=git-receive-pack\n");
    flush(&mut out);
    let caps = format!("{CAPABILITIES} agent={agent}");
    let head = match repo {
        Some(repo) => Some(repo.refname_to_id(MAIN_REF)?),
        None => None,
    };
    let line = match head {
        Some(oid) => format!("{oid} {MAIN_REF}\0{caps}\n"),
        None => format!("{} capabilities^{{}}\0{caps}\n", Oid::ZERO_SHA1),
    };
    pkt(&mut out, line.as_bytes());
    flush(&mut out);
    Ok(out)
}

/// One ref update asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub old: Oid,
    pub new: Oid,
    pub name: String,
}

/// A parsed receive-pack request.
#[derive(Debug)]
pub struct Request<'a> {
    pub commands: Vec<Command>,
    pub side_band: bool,
    /// The pack that follows the commands (empty when only deletions were asked for).
    pub pack: &'a [u8],
}

/// Parses the commands (up to the flush) and locates the pack after them.
pub fn parse(body: &[u8]) -> Result<Request<'_>, ProtocolError> {
    let mut at = 0;
    let mut commands = Vec::new();
    let mut side_band = false;
    loop {
        if at == body.len() && commands.is_empty() {
            break;
        }
        let len = body
            .get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or(ProtocolError::Malformed("bad pkt-line length"))?;
        if len == 0 {
            at += 4;
            break;
        }
        if len < 4 || at + len > body.len() {
            return Err(ProtocolError::Malformed("truncated pkt-line"));
        }
        let line = &body[at + 4..at + len];
        at += len;
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let (line, caps) = match line.iter().position(|b| *b == 0) {
            Some(nul) => (&line[..nul], &line[nul + 1..]),
            None => (line, &b""[..]),
        };
        if commands.is_empty() {
            side_band = caps.split(|b| *b == b' ').any(|c| c == b"side-band-64k");
        }
        if line.starts_with(b"shallow ") {
            return Err(ProtocolError::Unexpected(
                "pushes from shallow clones are not accepted".into(),
            ));
        }
        let text = std::str::from_utf8(line).map_err(|_| ProtocolError::Malformed("command"))?;
        let mut parts = text.splitn(3, ' ');
        let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ProtocolError::Unexpected(text.chars().take(80).collect()));
        };
        let oid = |s: &str| {
            if s.len() == 40 {
                Oid::from_str(s).map_err(|_| ProtocolError::Malformed("object id"))
            } else {
                Err(ProtocolError::Malformed("object id"))
            }
        };
        commands.push(Command {
            old: oid(old)?,
            new: oid(new)?,
            name: name.to_owned(),
        });
    }
    Ok(Request {
        commands,
        side_band,
        pack: &body[at..],
    })
}

/// The `report-status` answer: `unpack ok` (or the unpack error), then one `ok`/`ng` per ref,
/// inside side-band 1 when asked for, with `messages` on band 2 (git shows them as `remote:`).
pub fn report(
    side_band: bool,
    unpack: Result<(), &str>,
    refs: &[(String, Result<(), String>)],
    messages: &[String],
) -> Vec<u8> {
    let clean = |s: &str| {
        s.replace(['\n', '\r'], " ")
            .chars()
            .take(900)
            .collect::<String>()
    };
    let mut status = Vec::new();
    match unpack {
        Ok(()) => pkt(&mut status, b"unpack ok\n"),
        Err(e) => pkt(&mut status, format!("unpack {}\n", clean(e)).as_bytes()),
    }
    for (name, result) in refs {
        match result {
            Ok(()) => pkt(&mut status, format!("ok {name}\n").as_bytes()),
            Err(e) => pkt(&mut status, format!("ng {name} {}\n", clean(e)).as_bytes()),
        }
    }
    flush(&mut status);
    if !side_band {
        return status;
    }
    let mut out = Vec::new();
    for message in messages {
        let mut frame = vec![2u8];
        frame.extend_from_slice(format!("{}\n", clean(message)).as_bytes());
        pkt(&mut out, &frame);
    }
    for chunk in status.chunks(65515) {
        let mut frame = vec![1u8];
        frame.extend_from_slice(chunk);
        pkt(&mut out, &frame);
    }
    flush(&mut out);
    out
}

/// A pushed commit that passed every check, its new objects kept aside in a quarantine
/// directory until [`Pushed::move_into`]; dropping it removes the quarantine.
#[derive(Debug)]
pub struct Pushed {
    /// Where `main` was when the push was checked.
    pub old: Oid,
    pub commit: Oid,
    quarantine: Option<PathBuf>,
}

impl Pushed {
    /// Moves the quarantined pack into the repository (pack first, index last, so readers
    /// never see an index without its pack).
    pub fn move_into(&self, repo: &Repository) -> Result<(), git2::Error> {
        let Some(quarantine) = &self.quarantine else {
            return Ok(());
        };
        let dest = repo.path().join("objects").join("pack");
        let io = |e: std::io::Error| git2::Error::from_str(&format!("moving a pushed pack: {e}"));
        std::fs::create_dir_all(&dest).map_err(io)?;
        for path in pack::packs(quarantine) {
            let idx = path.with_extension("idx");
            let name = |p: &Path| dest.join(p.file_name().expect("pack files have names"));
            std::fs::rename(&path, name(&path)).map_err(io)?;
            std::fs::rename(&idx, name(&idx)).map_err(io)?;
        }
        repo.odb()?.refresh()
    }
}

impl Drop for Pushed {
    fn drop(&mut self) {
        if let Some(q) = &self.quarantine {
            let _ = std::fs::remove_dir_all(q);
        }
    }
}

/// Why a push was refused: the pack could not be read (`unpack` fails), or the ref update is
/// refused (`ng`).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Unpack(String),
    Ref(String),
}

/// Checks the update of `main` to `command.new` with `pack`, against the upload rules.
pub fn check(
    repo: &Repository,
    command: &Command,
    pack: &[u8],
    limits: &Limits,
) -> Result<Pushed, Refusal> {
    let unpack = |e: String| Refusal::Unpack(e);
    let mut pushed = Pushed {
        old: command.old,
        commit: command.new,
        quarantine: None,
    };
    let objects = repo.path().join("objects");
    let has_objects = pack.len() >= 12 && pack[8..12] != [0, 0, 0, 0];
    if has_objects {
        pack::check_sizes(
            pack,
            limits.max_file_bytes,
            limits.max_uncompressed_bytes.saturating_mul(2),
        )
        .map_err(|e| unpack(format!("pack refused: {e}")))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let quarantine = objects.join(format!("incoming-{}-{nanos}", std::process::id()));
        pushed.quarantine = Some(quarantine.clone());
        pack::store(&quarantine.join("pack"), pack).map_err(|e| unpack(e.message().to_owned()))?;
    }
    // The repository as it would be with the pushed objects.
    let view = Repository::open_bare(repo.path()).map_err(|e| unpack(e.message().to_owned()))?;
    if let Some(q) = &pushed.quarantine {
        view.odb()
            .and_then(|odb| odb.add_disk_alternate(&q.to_string_lossy()))
            .map_err(|e| unpack(e.message().to_owned()))?;
    }
    let refuse = |e: String| Refusal::Ref(e);
    let commit = view.find_commit(command.new).map_err(|_| {
        refuse(format!(
            "{} is not a commit in the pushed pack",
            command.new
        ))
    })?;
    let tree = tree_upload(&view, commit.tree_id(), limits).map_err(|e| refuse(e.to_string()))?;
    let accepted = read_upload(
        &tree,
        &Limits {
            // The archive is made here, stored, not compressed: the pack was capped instead.
            max_compressed_bytes: u64::MAX,
            ..*limits
        },
    )
    .map_err(|e| refuse(e.to_string()))?;
    let canonical = tree_oid(&accepted).map_err(|e| refuse(e.message().to_owned()))?;
    if canonical != commit.tree_id() {
        return Err(refuse(
            "the pushed tree is not in git's canonical form (empty directories, unusual modes or \
             duplicate names); commit it with stock git"
                .into(),
        ));
    }
    if let Some(q) = &pushed.quarantine {
        drop_known_objects(repo, q).map_err(|e| unpack(e.message().to_owned()))?;
    }
    Ok(pushed)
}

/// Rewrites the quarantined pack without the objects the repository already holds, so no object
/// is stored twice (joined packs must not repeat one). Usually there are none and nothing is
/// rewritten.
fn drop_known_objects(repo: &Repository, quarantine: &Path) -> Result<(), git2::Error> {
    let odb = repo.odb()?;
    let incoming = Odb::new()?;
    incoming.add_disk_alternate(&quarantine.to_string_lossy())?;
    let mut ids = Vec::new();
    incoming.foreach(|oid| {
        ids.push(*oid);
        true
    })?;
    if !ids.iter().any(|oid| odb.exists(*oid)) {
        return Ok(());
    }
    let mut writer = pack::PackWriter::default();
    for oid in ids.iter().filter(|oid| !odb.exists(**oid)) {
        let object = incoming.read(*oid)?;
        writer
            .add(object.kind(), *oid, object.data())
            .map_err(|e| git2::Error::from_str(&e.to_string()))?;
    }
    let old = pack::packs(quarantine);
    drop(incoming);
    for path in old {
        let _ = std::fs::remove_file(path.with_extension("idx"));
        let _ = std::fs::remove_file(&path);
    }
    if !writer.is_empty() {
        pack::store(&quarantine.join("pack"), &writer.finish())?;
    }
    Ok(())
}

/// The tree `root` as a tar.gz (stored, not compressed) of raw paths, for [`read_upload`]. Only
/// what guards memory is checked here (entry count and sizes, before a blob is read); every
/// other rule is `read_upload`'s.
fn tree_upload(repo: &Repository, root: Oid, limits: &Limits) -> Result<Vec<u8>, UploadError> {
    let odb = repo
        .odb()
        .map_err(|e| UploadError::Malformed(e.message().to_owned()))?;
    let bad = |e: git2::Error| UploadError::Malformed(format!("pushed tree: {}", e.message()));
    let mut tar = tar::Builder::new(Vec::new());
    let (mut count, mut total) = (0u64, 0u64);
    let mut stack: Vec<(Vec<u8>, Oid)> = vec![(Vec::new(), root)];
    while let Some((prefix, oid)) = stack.pop() {
        let tree = repo.find_tree(oid).map_err(bad)?;
        for entry in tree.iter() {
            count += 1;
            if count > limits.max_files {
                return Err(UploadError::TooLarge {
                    cap: Cap::FileCount,
                    limit: limits.max_files,
                });
            }
            let mut path = prefix.clone();
            path.extend_from_slice(entry.name_bytes());
            let shown = String::from_utf8_lossy(&path).chars().take(200).collect();
            let hostile = |reason| UploadError::Hostile {
                entry: shown,
                reason,
            };
            let mode = entry.filemode();
            if mode == 0o040000 {
                path.push(b'/');
                stack.push((path, entry.id()));
                continue;
            }
            let kind = match mode {
                0o100644 | 0o100755 => tar::EntryType::Regular,
                0o120000 => tar::EntryType::Symlink,
                0o160000 => return Err(hostile("submodules are not supported")),
                _ => return Err(hostile("unsupported tree entry mode")),
            };
            let (size, object_kind) = odb.read_header(entry.id()).map_err(bad)?;
            if object_kind != ObjectType::Blob {
                return Err(hostile("tree entry is not a blob"));
            }
            let size = size as u64;
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
            let blob = odb.read(entry.id()).map_err(bad)?;
            let result = if kind == tar::EntryType::Symlink {
                append(&mut tar, &path, kind, b"", 0o777, Some(blob.data()))
            } else {
                let perm = if mode == 0o100755 { 0o755 } else { 0o644 };
                append(&mut tar, &path, kind, blob.data(), perm, None)
            };
            result.map_err(|e| UploadError::Malformed(e.to_string()))?;
        }
    }
    let tar = tar
        .into_inner()
        .map_err(|e| UploadError::Malformed(e.to_string()))?;
    let mut gz = GzEncoder::new(Vec::with_capacity(tar.len() + 1024), Compression::none());
    gz.write_all(&tar)
        .and_then(|()| gz.finish())
        .map_err(|e| UploadError::Malformed(e.to_string()))
}

/// Appends one entry with its path and link target written raw (GNU long-name records when
/// they do not fit), so every name reaches `read_upload`'s checks as the push spelled it.
fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &[u8],
    kind: tar::EntryType,
    data: &[u8],
    mode: u32,
    link: Option<&[u8]>,
) -> std::io::Result<()> {
    let long = |tar: &mut tar::Builder<Vec<u8>>, kind, value: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().expect("gnu header").name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_mode(0o644);
        let mut value = value.to_vec();
        value.push(0);
        h.set_size(value.len() as u64);
        h.set_cksum();
        tar.append(&h, &value[..])
    };
    let mut h = tar::Header::new_gnu();
    if path.len() > 100 {
        long(tar, tar::EntryType::GNULongName, path)?;
    }
    if let Some(link) = link
        && link.len() > 100
    {
        long(tar, tar::EntryType::GNULongLink, link)?;
    }
    let gnu = h.as_gnu_mut().expect("gnu header");
    let n = path.len().min(100);
    gnu.name[..n].copy_from_slice(&path[..n]);
    if let Some(link) = link {
        let n = link.len().min(100);
        gnu.linkname[..n].copy_from_slice(&link[..n]);
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_cksum();
    tar.append(&h, data)
}

#[cfg(test)]
mod tests;
