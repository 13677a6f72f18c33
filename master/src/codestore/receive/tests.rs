//! Tests of receive-pack (`receive.rs`): packs, hostile trees, commands and the report.

use super::*;
use crate::codestore::CodeStore;
use crate::codestore::objects::tree_objects;
use crate::upload::{TreeEntry, UploadTree};
use berth_worker_api::ValidName;

fn name(s: &str) -> ValidName {
    ValidName::parse("id", s).unwrap()
}

fn upload(files: &[(&str, &str)]) -> UploadTree {
    let mut t = UploadTree::default();
    for (p, d) in files {
        t.entries.insert(
            (*p).into(),
            TreeEntry::File {
                data: d.as_bytes().to_vec(),
                executable: false,
            },
        );
    }
    t
}

/// Adds every object of `tree` and a commit of it on `parent` to `w`; answers the commit.
fn add_commit(w: &mut pack::PackWriter, tree: &UploadTree, parent: Oid) -> Oid {
    let root = tree_objects(tree, &mut |kind, oid, data| {
        w.add(kind, oid, data).unwrap();
        Ok(())
    })
    .unwrap();
    let body = format!(
        "tree {root}\nparent {parent}\nauthor t <t@x> 1 +0000\ncommitter t <t@x> 1 +0000\n\nm\n"
    );
    let commit = Oid::hash_object(ObjectType::Commit, body.as_bytes()).unwrap();
    w.add(ObjectType::Commit, commit, body.as_bytes()).unwrap();
    commit
}

/// A pack of every object of `tree` plus a commit of it on `parent`; answers (pack, commit).
fn pack_of(tree: &UploadTree, parent: Oid) -> (Vec<u8>, Oid) {
    let mut w = pack::PackWriter::default();
    let commit = add_commit(&mut w, tree, parent);
    (w.finish(), commit)
}

#[test]
fn history_under_a_pushed_tip_cannot_be_built_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = CodeStore::new(dir.path());
    let (u, i) = (name("u"), name("i"));
    let c1 = store
        .commit(&u, &i, &upload(&[("compose.yaml", "a")]), "1")
        .unwrap()
        .commit;
    let c1 = Oid::from_str(&c1).unwrap();
    let mut w = pack::PackWriter::default();
    // The commit under the tip has no compose file: it would be refused as an upload.
    let mid = add_commit(&mut w, &upload(&[("other", "c")]), c1);
    let tip = add_commit(&mut w, &upload(&[("compose.yaml", "d")]), mid);
    let repo = store.open(&u, &i).unwrap();
    let cmd = Command {
        old: c1,
        new: tip,
        name: MAIN_REF.into(),
    };
    let pushed = check(&repo, &cmd, &w.finish(), &Limits::default()).unwrap();
    store.accept_push(&u, &i, &pushed, true).unwrap().unwrap();
    let resolve = |c: Oid| store.resolve_commit(&u, &i, &c.to_string());
    assert_eq!(resolve(tip).unwrap(), tip.to_string());
    assert_eq!(resolve(c1).unwrap(), c1.to_string());
    let err = resolve(mid).unwrap_err().to_string();
    assert!(err.contains("never checked"), "{err}");
}

#[test]
fn known_objects_are_not_stored_twice_and_hostile_trees_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = CodeStore::new(dir.path());
    let (u, i) = (name("u"), name("i"));
    let t1 = upload(&[("compose.yaml", "a"), ("web/x", "same")]);
    let c1 = Oid::from_str(&store.commit(&u, &i, &t1, "1").unwrap().commit).unwrap();
    // The client resends `web/x` and its tree, which the repository already has.
    let t2 = upload(&[("compose.yaml", "b"), ("web/x", "same")]);
    let (pack, c2) = pack_of(&t2, c1);
    let repo = store.open(&u, &i).unwrap();
    let limits = Limits::default();
    let cmd = Command {
        old: c1,
        new: c2,
        name: MAIN_REF.into(),
    };
    let pushed = check(&repo, &cmd, &pack, &limits).unwrap();
    store.accept_push(&u, &i, &pushed, true).unwrap().unwrap();
    drop(pushed);
    assert_eq!(store.head(&u, &i).unwrap(), Some(c2.to_string()));
    let objects = repo.path().join("objects");
    let (_, count) = pack::joined(&objects).unwrap();
    // c1: 2 blobs, 2 trees, commit; c2 adds a blob, a root tree and a commit.
    assert_eq!(count, 8);
    let leftovers = std::fs::read_dir(&objects)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("incoming-")
        })
        .count();
    assert_eq!(leftovers, 0);

    // A tree naming `.git`, and one with an empty directory: refused, nothing moves.
    let blob = Oid::hash_object(ObjectType::Blob, b"x").unwrap();
    let empty = Oid::hash_object(ObjectType::Tree, b"").unwrap();
    let compose = Oid::hash_object(ObjectType::Blob, b"services: {}\n").unwrap();
    for (extra, reason) in [
        ((".git", 0o100644, blob), "`.git`"),
        (("empty", 0o040000, empty), "canonical"),
    ] {
        let mut entries = vec![("compose.yaml", 0o100644, compose), extra];
        entries.sort_by_key(|e| e.0);
        let mut body = Vec::new();
        for (n, mode, oid) in entries {
            body.extend_from_slice(format!("{mode:o} {n}\0").as_bytes());
            body.extend_from_slice(oid.as_bytes());
        }
        let root = Oid::hash_object(ObjectType::Tree, &body).unwrap();
        let commit_body = format!(
            "tree {root}\nparent {c2}\nauthor t <t@x> 1 +0000\ncommitter t <t@x> 1 +0000\n\nm\n"
        );
        let commit = Oid::hash_object(ObjectType::Commit, commit_body.as_bytes()).unwrap();
        let mut w = pack::PackWriter::default();
        w.add(ObjectType::Blob, blob, b"x").unwrap();
        w.add(ObjectType::Blob, compose, b"services: {}\n").unwrap();
        w.add(ObjectType::Tree, empty, b"").unwrap();
        w.add(ObjectType::Tree, root, &body).unwrap();
        w.add(ObjectType::Commit, commit, commit_body.as_bytes())
            .unwrap();
        let cmd = Command {
            old: c2,
            new: commit,
            name: MAIN_REF.into(),
        };
        match check(&repo, &cmd, &w.finish(), &limits) {
            Err(Refusal::Ref(e)) => assert!(e.contains(reason), "{reason}: {e}"),
            other => panic!("{reason}: {other:?}"),
        }
        assert_eq!(store.head(&u, &i).unwrap(), Some(c2.to_string()));
    }
    assert_eq!(pack::packs(&objects).len(), 2);
}

#[test]
fn commands_parse_and_report_is_framed() {
    let mut body = Vec::new();
    let (a, b) = ("1".repeat(40), "2".repeat(40));
    pkt(
        &mut body,
        format!("{a} {b} refs/heads/main\0report-status side-band-64k\n").as_bytes(),
    );
    flush(&mut body);
    body.extend_from_slice(b"PACK...");
    let req = parse(&body).unwrap();
    assert!(req.side_band);
    assert_eq!(req.commands.len(), 1);
    assert_eq!(req.commands[0].name, "refs/heads/main");
    assert_eq!(req.pack, b"PACK...");
    assert!(parse(b"").unwrap().commands.is_empty());
    assert!(parse(b"0000").unwrap().commands.is_empty());
    assert!(parse(b"zzzz").is_err());
    let plain = report(
        false,
        Ok(()),
        &[("refs/heads/x".into(), Err("no\nway".into()))],
        &[],
    );
    assert_eq!(plain, b"000eunpack ok\n001bng refs/heads/x no way\n0000");
}
