//! An upload as git objects: its blobs and trees hashed in memory ([`tree_oid`], nothing
//! written), and a commit of it written as one pack of the objects the repository lacks.

use std::collections::BTreeMap;

use git2::{ObjectType, Oid, Repository, Signature};

use super::pack::{self, PackWriter};
use super::{AUTHOR_EMAIL, AUTHOR_NAME, Committed, MAIN_REF};
use crate::upload::{TreeEntry, UploadTree};

/// Writes `tree` and a commit of it (parent: the current head) as one pack of the objects the
/// repository lacks (each is hashed first and looked up, so an unchanged file costs a hash),
/// then moves `main` to it, only if `main` did not move meanwhile.
pub(super) fn write_commit(
    repo: &Repository,
    tree: &UploadTree,
    message: &str,
) -> Result<Committed, git2::Error> {
    let odb = repo.odb()?;
    let mut pack = PackWriter::default();
    let io = |e: std::io::Error| git2::Error::from_str(&format!("writing a pack: {e}"));
    let tree_id = tree_objects(tree, &mut |kind, oid, data| {
        if !odb.exists(oid) {
            pack.add(kind, oid, data).map_err(io)?;
        }
        Ok(())
    })?;
    let parent = match repo.refname_to_id(MAIN_REF) {
        Ok(oid) => Some(repo.find_commit(oid)?),
        Err(e) if e.code() == git2::ErrorCode::NotFound => None,
        Err(e) => return Err(e),
    };
    if let Some(parent) = &parent
        && parent.tree_id() == tree_id
    {
        return Ok(Committed {
            commit: parent.id().to_string(),
            changed: false,
        });
    }
    let sig = Signature::now(AUTHOR_NAME, AUTHOR_EMAIL)?;
    let body = commit_body(tree_id, parent.as_ref().map(|p| p.id()), &sig, message);
    let oid = Oid::hash_object(ObjectType::Commit, &body)?;
    pack.add(ObjectType::Commit, oid, &body).map_err(io)?;
    // Loose objects (a repository written before uploads were packs) join this pack, so later
    // clones can be served from the stored packs.
    let objects = repo.path().join("objects");
    let loose = pack::loose_objects(&objects);
    for (loose_oid, _) in &loose {
        let object = odb.read(*loose_oid)?;
        pack.add(object.kind(), *loose_oid, object.data())
            .map_err(io)?;
    }
    pack::store(&objects.join("pack"), &pack.finish())?;
    for (_, file) in &loose {
        let _ = std::fs::remove_file(file);
    }
    if pack::packs(&objects).len() > pack::MAX_PACKS
        && let Err(err) = pack::consolidate(&objects)
    {
        tracing::warn!(repo = %repo.path().display(), %err, "could not join the packs");
    }
    odb.refresh()?;
    match &parent {
        Some(parent) => {
            repo.reference_matching(MAIN_REF, oid, true, parent.id(), "upload")?;
        }
        None => {
            repo.reference(MAIN_REF, oid, false, "upload")?;
        }
    }
    Ok(Committed {
        commit: oid.to_string(),
        changed: true,
    })
}

/// A commit object's bytes, as git writes them.
fn commit_body(tree: Oid, parent: Option<Oid>, sig: &Signature<'_>, message: &str) -> Vec<u8> {
    let when = sig.when();
    let offset = when.offset_minutes();
    let stamp = format!(
        "{} <{}> {} {}{:02}{:02}",
        sig.name().unwrap_or(AUTHOR_NAME),
        sig.email().unwrap_or(AUTHOR_EMAIL),
        when.seconds(),
        if offset < 0 { '-' } else { '+' },
        offset.abs() / 60,
        offset.abs() % 60
    );
    let mut out = format!("tree {tree}\n");
    if let Some(parent) = parent {
        out.push_str(&format!("parent {parent}\n"));
    }
    out.push_str(&format!("author {stamp}\ncommitter {stamp}\n\n{message}"));
    out.into_bytes()
}

/// The git tree id `tree` would get, computed in memory (nothing is written).
pub(crate) fn tree_oid(tree: &UploadTree) -> Result<Oid, git2::Error> {
    tree_objects(tree, &mut |_, _, _| Ok(()))
}

pub(super) type Sink<'a> = dyn FnMut(ObjectType, Oid, &[u8]) -> Result<(), git2::Error> + 'a;

/// Hashes every object of `tree` (each blob, then each directory's tree object), handing each
/// to `sink`; answers the root tree id. A tree object is `<mode> <name>\0<20-byte id>` per
/// entry, entries in git's order (a directory sorts as if its name ended in `/`).
pub(super) fn tree_objects(tree: &UploadTree, sink: &mut Sink<'_>) -> Result<Oid, git2::Error> {
    let mut root = Dir::default();
    for (path, entry) in &tree.entries {
        let (data, mode) = match entry {
            TreeEntry::File { data, executable } => {
                (&data[..], if *executable { 0o100755 } else { 0o100644 })
            }
            TreeEntry::Symlink { target } => (target.as_bytes(), 0o120000),
        };
        let oid = Oid::hash_object(ObjectType::Blob, data)?;
        sink(ObjectType::Blob, oid, data)?;
        root.insert(path, oid, mode)?;
    }
    hash_dir(&root, sink)
}

fn hash_dir(dir: &Dir, sink: &mut Sink<'_>) -> Result<Oid, git2::Error> {
    let mut entries: Vec<(Vec<u8>, &str, Oid, i32)> = Vec::new();
    for (name, node) in &dir.children {
        let (oid, mode, key) = match node {
            Node::Leaf(oid, mode) => (*oid, *mode, name.clone()),
            Node::Dir(sub) => (hash_dir(sub, sink)?, 0o040000, format!("{name}/")),
        };
        entries.push((key.into_bytes(), name, oid, mode));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut body = Vec::new();
    for (_, name, oid, mode) in entries {
        body.extend_from_slice(format!("{mode:o} {name}\0").as_bytes());
        body.extend_from_slice(oid.as_bytes());
    }
    let oid = Oid::hash_object(ObjectType::Tree, &body)?;
    sink(ObjectType::Tree, oid, &body)?;
    Ok(oid)
}

/// A directory being assembled: name -> child.
#[derive(Default)]
pub(super) struct Dir {
    pub(super) children: BTreeMap<String, Node>,
}

pub(super) enum Node {
    Dir(Dir),
    Leaf(Oid, i32),
}

impl Dir {
    /// Places a leaf at its `/`-separated path, creating the directories on the way.
    pub(super) fn insert(&mut self, path: &str, oid: Oid, mode: i32) -> Result<(), git2::Error> {
        let mut dir = self;
        let mut parts = path.split('/').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                dir.children.insert(part.to_owned(), Node::Leaf(oid, mode));
                break;
            }
            let child = dir
                .children
                .entry(part.to_owned())
                .or_insert_with(|| Node::Dir(Dir::default()));
            dir = match child {
                Node::Dir(d) => d,
                // UploadTree guarantees no path is both a file and a directory.
                Node::Leaf(..) => return Err(git2::Error::from_str("path clash in upload tree")),
            };
        }
        Ok(())
    }
}
