//! The code store: one bare git repository per instance at `<root>/<user>/<id>.git`, written with
//! git2 straight into the object database (no working tree, no index).
//!
//! Invariants: a repository exists only once it holds a commit on `refs/heads/main` (HEAD points
//! there); each upload is one commit whose parent is the previous head; an upload whose tree equals
//! the head's tree answers the head commit and writes nothing; an upload that may not change the
//! head is compared by hashing it in memory, so a refused one writes no object either. Every function here is blocking
//! (git2); callers run it on a blocking thread.

pub mod forge;
pub mod protocol;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_worker_api::ValidName;
use git2::{ObjectType, Oid, Repository, RepositoryInitOptions, Signature};

use crate::upload::{TreeEntry, UploadTree};

/// The branch every upload commits to.
pub const MAIN_REF: &str = "refs/heads/main";
const AUTHOR_NAME: &str = "berth";
const AUTHOR_EMAIL: &str = "berth@localhost";

#[derive(Debug, thiserror::Error)]
pub enum CodeStoreError {
    #[error("git error in {repo}: {source}")]
    Git {
        repo: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("io error in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no repository for {user}/{id}")]
    NotFound { user: String, id: String },
    #[error("commit {0} is not in the repository")]
    UnknownCommit(String),
}

/// Result of committing an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// 40-hex commit id now at the head of `main`.
    pub commit: String,
    /// False when the upload equalled the head and nothing was written.
    pub changed: bool,
}

#[derive(Debug, Clone)]
pub struct CodeStore {
    root: PathBuf,
}

impl CodeStore {
    /// A store rooted at `root` (normally `<data>/git`); created on first commit.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of an instance's bare repository. Both names are validated, so the path stays under
    /// the root.
    pub fn repo_path(&self, user: &ValidName, id: &ValidName) -> PathBuf {
        self.root.join(user.as_str()).join(format!("{id}.git"))
    }

    pub fn exists(&self, user: &ValidName, id: &ValidName) -> bool {
        self.repo_path(user, id).join("HEAD").is_file()
    }

    pub fn open(&self, user: &ValidName, id: &ValidName) -> Result<Repository, CodeStoreError> {
        let path = self.repo_path(user, id);
        if !path.join("HEAD").is_file() {
            return Err(CodeStoreError::NotFound {
                user: user.to_string(),
                id: id.to_string(),
            });
        }
        Repository::open_bare(&path).map_err(|source| CodeStoreError::Git { repo: path, source })
    }

    /// The head commit of `main`, `None` if the instance has no repository.
    pub fn head(&self, user: &ValidName, id: &ValidName) -> Result<Option<String>, CodeStoreError> {
        if !self.exists(user, id) {
            return Ok(None);
        }
        let repo = self.open(user, id)?;
        let path = self.repo_path(user, id);
        let head = repo
            .refname_to_id(MAIN_REF)
            .map_err(|source| CodeStoreError::Git { repo: path, source })?;
        Ok(Some(head.to_string()))
    }

    /// Checks that `commit` is a commit of the instance's repository; answers its full id.
    pub fn resolve_commit(
        &self,
        user: &ValidName,
        id: &ValidName,
        commit: &str,
    ) -> Result<String, CodeStoreError> {
        let repo = self.open(user, id)?;
        let unknown = || CodeStoreError::UnknownCommit(commit.chars().take(80).collect());
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let oid = Oid::from_str(commit).map_err(|_| unknown())?;
        repo.find_commit(oid).map_err(|_| unknown())?;
        Ok(oid.to_string())
    }

    /// Commits `tree` as the new head of `main`, creating the repository on first use.
    pub fn commit(
        &self,
        user: &ValidName,
        id: &ValidName,
        tree: &UploadTree,
        message: &str,
    ) -> Result<Committed, CodeStoreError> {
        self.commit_checked(user, id, tree, message, true)
            .map(|c| c.expect("a commit is always allowed to change the head"))
    }

    /// Like [`CodeStore::commit`], but when `allow_change` is false only an upload equal to the
    /// head is accepted (answering the head); a different one writes nothing at all (not even its
    /// objects) and answers `None`.
    #[tracing::instrument(skip_all, fields(%user, %id), err)]
    pub fn commit_checked(
        &self,
        user: &ValidName,
        id: &ValidName,
        tree: &UploadTree,
        message: &str,
        allow_change: bool,
    ) -> Result<Option<Committed>, CodeStoreError> {
        let path = self.repo_path(user, id);
        let git = |source| CodeStoreError::Git {
            repo: path.clone(),
            source,
        };
        if !allow_change {
            return self.head_if_equal(user, id, tree).map_err(git);
        }
        let created = !path.join("HEAD").is_file();
        let repo = if created {
            let parent = path.parent().unwrap_or(&self.root);
            std::fs::create_dir_all(parent).map_err(|source| CodeStoreError::Io {
                path: parent.to_owned(),
                source,
            })?;
            let mut opts = RepositoryInitOptions::new();
            opts.bare(true).initial_head("main").mkpath(true);
            Repository::init_opts(&path, &opts).map_err(git)?
        } else {
            Repository::open_bare(&path).map_err(git)?
        };
        let result = write_commit(&repo, tree, message).map_err(git);
        if result.is_err() && created {
            // The repository was born with this upload; leave nothing behind.
            let _ = std::fs::remove_dir_all(&path);
        }
        result.map(Some)
    }

    /// The head, unchanged, when `tree` equals its tree; `None` otherwise (or without a
    /// repository). Only reads: the upload is hashed in memory.
    fn head_if_equal(
        &self,
        user: &ValidName,
        id: &ValidName,
        tree: &UploadTree,
    ) -> Result<Option<Committed>, git2::Error> {
        let path = self.repo_path(user, id);
        if !path.join("HEAD").is_file() {
            return Ok(None);
        }
        let repo = Repository::open_bare(&path)?;
        let head = match repo.refname_to_id(MAIN_REF) {
            Ok(oid) => repo.find_commit(oid)?,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok((head.tree_id() == tree_oid(tree)?).then(|| Committed {
            commit: head.id().to_string(),
            changed: false,
        }))
    }

    /// Undoes the upload that made `commit` the head: `main` goes back to `previous`, or, when the
    /// repository was born with that upload (`previous` is `None`), the repository is removed.
    /// Nothing happens if the head is no longer `commit`. The commit's objects stay, unreferenced.
    #[tracing::instrument(skip_all, fields(%user, %id, %commit), err)]
    pub fn roll_back(
        &self,
        user: &ValidName,
        id: &ValidName,
        commit: &str,
        previous: Option<&str>,
    ) -> Result<(), CodeStoreError> {
        let path = self.repo_path(user, id);
        let git = |source| CodeStoreError::Git {
            repo: path.clone(),
            source,
        };
        if self.head(user, id)?.as_deref() != Some(commit) {
            return Ok(());
        }
        match previous {
            Some(previous) => {
                let repo = Repository::open_bare(&path).map_err(git)?;
                let (to, from) = (
                    Oid::from_str(previous).map_err(git)?,
                    Oid::from_str(commit).map_err(git)?,
                );
                repo.reference_matching(MAIN_REF, to, true, from, "roll back a failed upload")
                    .map_err(git)?;
                Ok(())
            }
            None => self.delete(user, id).map(drop),
        }
    }

    /// Removes the instance's repository; answers whether there was one.
    pub fn delete(&self, user: &ValidName, id: &ValidName) -> Result<bool, CodeStoreError> {
        let path = self.repo_path(user, id);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(CodeStoreError::Io { path, source }),
        }
    }
}

fn write_commit(
    repo: &Repository,
    tree: &UploadTree,
    message: &str,
) -> Result<Committed, git2::Error> {
    let tree_id = write_tree(repo, tree)?;
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
    let tree = repo.find_tree(tree_id)?;
    let parents: Vec<_> = parent.iter().collect();
    let oid = repo.commit(Some(MAIN_REF), &sig, &sig, message, &tree, &parents)?;
    Ok(Committed {
        commit: oid.to_string(),
        changed: true,
    })
}

/// The git tree id `tree` would get, computed in memory (nothing is written): each tree object
/// is `<mode> <name>\0<20-byte id>` per entry, entries in git's order (a directory sorts as if
/// its name ended in `/`).
fn tree_oid(tree: &UploadTree) -> Result<Oid, git2::Error> {
    let mut root = Dir::default();
    for (path, entry) in &tree.entries {
        let (oid, mode) = match entry {
            TreeEntry::File { data, executable } => (
                Oid::hash_object(ObjectType::Blob, data)?,
                if *executable { 0o100755 } else { 0o100644 },
            ),
            TreeEntry::Symlink { target } => (
                Oid::hash_object(ObjectType::Blob, target.as_bytes())?,
                0o120000,
            ),
        };
        root.insert(path, oid, mode)?;
    }
    hash_dir(&root)
}

fn hash_dir(dir: &Dir) -> Result<Oid, git2::Error> {
    let mut entries: Vec<(Vec<u8>, &str, Oid, i32)> = Vec::new();
    for (name, node) in &dir.children {
        let (oid, mode, key) = match node {
            Node::Leaf(oid, mode) => (*oid, *mode, name.clone()),
            Node::Dir(sub) => (hash_dir(sub)?, 0o040000, format!("{name}/")),
        };
        entries.push((key.into_bytes(), name, oid, mode));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut body = Vec::new();
    for (_, name, oid, mode) in entries {
        body.extend_from_slice(format!("{mode:o} {name}\0").as_bytes());
        body.extend_from_slice(oid.as_bytes());
    }
    Oid::hash_object(ObjectType::Tree, &body)
}

/// A directory being assembled: name -> child.
#[derive(Default)]
struct Dir {
    children: BTreeMap<String, Node>,
}

enum Node {
    Dir(Dir),
    Leaf(Oid, i32),
}

impl Dir {
    /// Places a leaf at its `/`-separated path, creating the directories on the way.
    fn insert(&mut self, path: &str, oid: Oid, mode: i32) -> Result<(), git2::Error> {
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

fn write_tree(repo: &Repository, tree: &UploadTree) -> Result<Oid, git2::Error> {
    let mut root = Dir::default();
    for (path, entry) in &tree.entries {
        let (oid, mode) = match entry {
            TreeEntry::File { data, executable } => (
                repo.blob(data)?,
                if *executable { 0o100755 } else { 0o100644 },
            ),
            TreeEntry::Symlink { target } => (repo.blob(target.as_bytes())?, 0o120000),
        };
        root.insert(path, oid, mode)?;
    }
    write_dir(repo, &root)
}

fn write_dir(repo: &Repository, dir: &Dir) -> Result<Oid, git2::Error> {
    let mut builder = repo.treebuilder(None)?;
    for (name, node) in &dir.children {
        match node {
            Node::Leaf(oid, mode) => builder.insert(name, *oid, *mode)?,
            Node::Dir(sub) => builder.insert(name, write_dir(repo, sub)?, 0o040000)?,
        };
    }
    builder.write()
}

/// Number of objects (commits, trees, blobs) reachable from `want` but not from `have`; used by
/// tests and the benchmark to reason about incremental fetches.
pub fn objects_between(
    repo: &Repository,
    want: Oid,
    have: Option<Oid>,
) -> Result<usize, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.push(want)?;
    if let Some(have) = have {
        walk.hide(have)?;
    }
    let mut pb = repo.packbuilder()?;
    pb.insert_walk(&mut walk)?;
    Ok(pb.object_count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ValidName {
        ValidName::parse("id", s).unwrap()
    }

    fn tree(files: &[(&str, &str, bool)]) -> UploadTree {
        let mut t = UploadTree::default();
        for (p, d, x) in files {
            t.entries.insert(
                (*p).to_owned(),
                TreeEntry::File {
                    data: d.as_bytes().to_vec(),
                    executable: *x,
                },
            );
        }
        t
    }

    #[test]
    fn commits_chain_and_identical_upload_is_same_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path().join("git"));
        let (u, i) = (name("alice"), name("shop-1"));
        assert_eq!(store.head(&u, &i).unwrap(), None);
        let t1 = tree(&[("compose.yaml", "a", false), ("bin/run", "b", true)]);
        let c1 = store.commit(&u, &i, &t1, "upload").unwrap();
        assert!(c1.changed);
        let again = store.commit(&u, &i, &t1, "upload").unwrap();
        assert_eq!(
            again,
            Committed {
                commit: c1.commit.clone(),
                changed: false
            }
        );
        let t2 = tree(&[("compose.yaml", "a2", false), ("bin/run", "b", true)]);
        let c2 = store.commit(&u, &i, &t2, "upload").unwrap();
        assert!(c2.changed);
        let repo = store.open(&u, &i).unwrap();
        assert!(repo.is_bare());
        assert_eq!(repo.head().unwrap().name().unwrap(), MAIN_REF);
        let head = repo
            .find_commit(Oid::from_str(&c2.commit).unwrap())
            .unwrap();
        assert_eq!(head.parent_id(0).unwrap().to_string(), c1.commit);
        let entry = head.tree().unwrap().get_path(Path::new("bin/run")).unwrap();
        assert_eq!(entry.filemode(), 0o100755);
        // Only the changed blob, the root tree and the commit are new.
        let new = objects_between(&repo, head.id(), Some(Oid::from_str(&c1.commit).unwrap()));
        assert_eq!(new.unwrap(), 3);
        assert_eq!(store.resolve_commit(&u, &i, &c1.commit).unwrap(), c1.commit);
        assert!(store.resolve_commit(&u, &i, "deadbeef").is_err());
        assert!(store.delete(&u, &i).unwrap());
        assert!(!store.delete(&u, &i).unwrap());
        assert!(!store.exists(&u, &i));
    }

    /// Every file under the repository's `objects/` (loose objects and packs).
    fn object_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| if p.is_dir() { object_files(&p) } else { 1 })
            .sum()
    }

    #[test]
    fn hashed_tree_id_equals_the_written_one() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        // Names whose order differs once directories sort as `name/`.
        let mut t = tree(&[
            ("a", "1", false),
            ("a.b", "2", true),
            ("a-b", "3", false),
            ("a0", "4", false),
            ("b/a", "5", false),
            ("b/a.x/y", "6", false),
            ("b/a-x", "7", false),
            ("b/a0", "8", false),
        ]);
        t.entries.insert(
            "b/link".to_owned(),
            TreeEntry::Symlink {
                target: "a.x/y".to_owned(),
            },
        );
        assert_eq!(tree_oid(&t).unwrap(), write_tree(&repo, &t).unwrap());
    }

    #[test]
    fn refused_change_writes_no_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path().join("git"));
        let (u, i) = (name("alice"), name("shop-1"));
        let t1 = tree(&[("compose.yaml", "a", false), ("big", "lots of data", false)]);
        let c1 = store.commit(&u, &i, &t1, "upload").unwrap();
        let objects = store.repo_path(&u, &i).join("objects");
        let before = object_files(&objects);
        // The same content is accepted (the head), a different one refused; nothing is written.
        let same = store.commit_checked(&u, &i, &t1, "upload", false).unwrap();
        assert_eq!(
            same,
            Some(Committed {
                commit: c1.commit.clone(),
                changed: false
            })
        );
        let t2 = tree(&[("compose.yaml", "b", false), ("big", "other data", false)]);
        assert_eq!(
            store.commit_checked(&u, &i, &t2, "upload", false).unwrap(),
            None
        );
        assert_eq!(object_files(&objects), before);
        assert_eq!(store.head(&u, &i).unwrap(), Some(c1.commit));
        // Without a repository nothing is created.
        let other = name("other");
        assert_eq!(
            store
                .commit_checked(&u, &other, &t1, "upload", false)
                .unwrap(),
            None
        );
        assert!(!store.repo_path(&u, &other).exists());
    }
}
