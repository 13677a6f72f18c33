//! Tests of the upload reader: hostile entries, caps, links, gzip members.

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
    let check =
        |items: &[Item<'_>], limits: &Limits, cap: Cap| match read_upload(&targz(items), limits) {
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

/// A tar.gz of compose.yaml plus `path`, written with the GNU long-name extension as tar does.
fn with_long_path(path: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (p, data) in [("compose.yaml", &b"services: {}\n"[..]), (path, &b"x"[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, p, data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn paths_past_path_max_and_names_past_name_max_are_refused() {
    // Issue 14's probe: one path of ~3,000 components in a few hundred bytes of gzip.
    let deep = format!("{}f", "a/".repeat(3000));
    let body = with_long_path(&deep);
    assert!(body.len() < 1024, "{} bytes", body.len());
    match read_upload(&body, &Limits::default()) {
        Err(UploadError::Hostile { entry, reason }) => {
            assert!(deep.starts_with(&entry) && entry.len() == 200, "{entry}");
            assert!(reason.contains("4096"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Under PATH_MAX but deeper than the depth cap.
    let deep = format!("{}f", "a/".repeat(MAX_PATH_DEPTH));
    let (entry, reason) = match read_upload(&with_long_path(&deep), &Limits::default()) {
        Err(UploadError::Hostile { entry, reason }) => (entry, reason),
        other => panic!("{other:?}"),
    };
    assert!(deep.starts_with(&entry), "{entry}");
    assert!(reason.contains("256 components"), "{reason}");
    // The longest and the deepest paths accepted.
    let longest = format!(
        "{}f",
        format!("{}/", "d".repeat(15)).repeat(MAX_PATH_DEPTH - 1)
    );
    assert!(longest.len() < MAX_PATH_BYTES, "{}", longest.len());
    assert!(read_upload(&with_long_path(&longest), &Limits::default()).is_ok());
    let deepest = format!("{}f", "a/".repeat(MAX_PATH_DEPTH - 1));
    assert!(read_upload(&with_long_path(&deepest), &Limits::default()).is_ok());

    let name = format!("dir/{}", "n".repeat(MAX_NAME_BYTES + 1));
    let (entry, reason) = match read_upload(&with_long_path(&name), &Limits::default()) {
        Err(UploadError::Hostile { entry, reason }) => (entry, reason),
        other => panic!("{other:?}"),
    };
    assert!(name.starts_with(&entry), "{entry}");
    assert!(reason.contains("255"), "{reason}");
    let ok = format!("dir/{}", "n".repeat(MAX_NAME_BYTES));
    assert!(read_upload(&with_long_path(&ok), &Limits::default()).is_ok());
}
