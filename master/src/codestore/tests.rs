//! Tests of the code store: commits, packs, wedged repositories.

use git2::Signature;

use super::objects::{Dir, Node};
use super::*;
use crate::upload::TreeEntry;

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

/// The tree as libgit2 writes it (blob by blob, tree builders), to check the hashing.
fn write_tree(repo: &Repository, tree: &UploadTree) -> Result<Oid, git2::Error> {
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

#[test]
fn uploads_are_packs_of_new_objects_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = CodeStore::new(dir.path().join("git"));
    let (u, i) = (name("alice"), name("shop-1"));
    let big = vec![9u8; 200_000];
    let mut t = tree(&[("compose.yaml", "a", false)]);
    t.entries.insert(
        "big".into(),
        TreeEntry::File {
            data: big,
            executable: false,
        },
    );
    store.commit(&u, &i, &t, "one").unwrap();
    let objects = store.repo_path(&u, &i).join("objects");
    assert!(!pack::has_loose_objects(&objects));
    let packs = pack::packs(&objects);
    assert_eq!(packs.len(), 1);
    let first = std::fs::metadata(&packs[0]).unwrap().len();
    t.entries.insert(
        "compose.yaml".into(),
        TreeEntry::File {
            data: b"b".to_vec(),
            executable: false,
        },
    );
    let c2 = store.commit(&u, &i, &t, "two").unwrap();
    let packs = pack::packs(&objects);
    assert_eq!(packs.len(), 2);
    assert!(!pack::has_loose_objects(&objects));
    // The second pack holds the new blob, root tree and commit; the big blob is reused.
    let second = packs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .find(|&len| len != first)
        .unwrap();
    assert!(second < 1000, "{second} bytes");
    let (joined, count) = pack::joined(&objects).unwrap();
    // Blob, big blob, tree, commit; then blob, tree, commit.
    assert_eq!(count, 7);
    assert!(joined.len() as u64 > first);
    let repo = store.open(&u, &i).unwrap();
    let head = repo
        .find_commit(Oid::from_str(&c2.commit).unwrap())
        .unwrap();
    assert_eq!(head.author().name().ok(), Some(AUTHOR_NAME));
    assert_eq!(head.message().ok(), Some("two"));
    assert_eq!(head.tree_id(), tree_oid(&t).unwrap());
}

#[test]
fn a_repository_without_main_is_absent_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = CodeStore::new(dir.path().join("git"));
    let (u, i) = (name("alice"), name("wedged"));
    // What a master killed during a first commit left: an initialised repository without
    // `main`, plus a temporary one from the atomic creation.
    let path = store.repo_path(&u, &i);
    let mut opts = RepositoryInitOptions::new();
    opts.bare(true).initial_head("main").mkpath(true);
    Repository::init_opts(&path, &opts).unwrap();
    let tmp = path.with_file_name(".wedged.git.tmp-1-2");
    std::fs::create_dir_all(tmp.join("objects")).unwrap();
    assert!(!store.exists(&u, &i));
    assert_eq!(store.head(&u, &i).unwrap(), None);
    assert!(matches!(
        store.open(&u, &i),
        Err(CodeStoreError::NotFound { .. })
    ));
    let t = tree(&[("compose.yaml", "a", false)]);
    let c = store.commit(&u, &i, &t, "upload").unwrap();
    assert_eq!(store.head(&u, &i).unwrap(), Some(c.commit));
    assert!(!tmp.exists());
    // Only non-live leftovers are removed by id.
    assert_eq!(store.remove_wedged(&i).unwrap(), 0);
    assert!(store.exists(&u, &i));
    let other = name("other");
    std::fs::create_dir_all(store.repo_path(&u, &other)).unwrap();
    assert_eq!(store.remove_wedged(&other).unwrap(), 1);
    assert!(!store.repo_path(&u, &other).exists());
    // Nothing but the repository itself is left in the user's directory.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["wedged.git"]);
}

#[test]
fn loose_objects_of_an_older_store_move_into_the_next_pack() {
    let dir = tempfile::tempdir().unwrap();
    let store = CodeStore::new(dir.path().join("git"));
    let (u, i) = (name("alice"), name("old"));
    // An older master wrote loose objects with libgit2.
    let path = store.repo_path(&u, &i);
    let mut opts = RepositoryInitOptions::new();
    opts.bare(true).initial_head("main").mkpath(true);
    let repo = Repository::init_opts(&path, &opts).unwrap();
    let t1 = tree(&[("compose.yaml", "a", false), ("keep", "kept", false)]);
    let tree_id = write_tree(&repo, &t1).unwrap();
    let sig = Signature::now("berth", "berth@localhost").unwrap();
    let tree1 = repo.find_tree(tree_id).unwrap();
    let c1 = repo
        .commit(Some(MAIN_REF), &sig, &sig, "old", &tree1, &[])
        .unwrap();
    let objects = path.join("objects");
    assert!(pack::has_loose_objects(&objects));
    let t2 = tree(&[("compose.yaml", "b", false), ("keep", "kept", false)]);
    let c2 = store.commit(&u, &i, &t2, "new").unwrap();
    assert!(!pack::has_loose_objects(&objects));
    let repo = store.open(&u, &i).unwrap();
    let head = repo
        .find_commit(Oid::from_str(&c2.commit).unwrap())
        .unwrap();
    assert_eq!(head.parent_id(0).unwrap(), c1);
    assert!(repo.find_commit(c1).is_ok());
    let (_, count) = pack::joined(&objects).unwrap();
    // Old: 2 blobs, tree, commit; new: blob, tree, commit.
    assert_eq!(count, 7);
}
