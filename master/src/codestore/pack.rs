//! Pack files, written and read natively: uploads are stored as one pack each (objects the
//! repository lacks, zlib-compressed once, no deltas), indexed by libgit2's indexer; a clone is
//! answered with the repository's packs joined into one, copied as they are (no object is
//! decompressed or compressed again), as long as no object is loose.
//!
//! Joining packs is sound because a pack entry's `OFS_DELTA` base is addressed relative to the
//! entry itself, every stored pack is self-contained (pushes are asked for `no-thin`), and no
//! object is stored twice (an upload or push only adds the objects the repository lacks).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::ZlibEncoder;
use git2::{Indexer, ObjectType, Oid};

/// zlib level of stored objects: fast, since uploads are mostly already compressed files and
/// a clone sends the stored bytes as they are.
const LEVEL: u32 = 1;

/// A pack being assembled in memory.
#[derive(Default)]
pub struct PackWriter {
    body: Vec<u8>,
    count: u32,
    seen: HashSet<Oid>,
}

fn type_code(kind: ObjectType) -> u8 {
    match kind {
        ObjectType::Commit => 1,
        ObjectType::Tree => 2,
        ObjectType::Blob => 3,
        ObjectType::Tag => 4,
        _ => 0,
    }
}

impl PackWriter {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends one whole object, once per id.
    pub fn add(&mut self, kind: ObjectType, oid: Oid, data: &[u8]) -> std::io::Result<()> {
        if !self.seen.insert(oid) {
            return Ok(());
        }
        if self.body.is_empty() {
            self.body.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\0");
        }
        let mut size = data.len() as u64;
        let mut byte = (type_code(kind) << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            self.body.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        self.body.push(byte);
        let mut z = ZlibEncoder::new(&mut self.body, Compression::new(LEVEL));
        z.write_all(data)?;
        z.finish()?;
        self.count += 1;
        Ok(())
    }

    /// The finished pack (header count and SHA-1 trailer filled in).
    pub fn finish(mut self) -> Vec<u8> {
        if self.body.is_empty() {
            self.body.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\0");
        }
        self.body[8..12].copy_from_slice(&self.count.to_be_bytes());
        let digest = sha1(&self.body);
        self.body.extend_from_slice(&digest);
        self.body
    }
}

/// Indexes `pack` into `pack_dir` (`pack-<sum>.pack` and `.idx`); answers the pack's path.
pub fn store(pack_dir: &Path, pack: &[u8]) -> Result<PathBuf, git2::Error> {
    std::fs::create_dir_all(pack_dir)
        .map_err(|e| git2::Error::from_str(&format!("{}: {e}", pack_dir.display())))?;
    let mut indexer = Indexer::new(None, pack_dir, 0o444, false)?;
    indexer
        .write_all(pack)
        .map_err(|e| git2::Error::from_str(&format!("indexing a pack: {e}")))?;
    let name = indexer.commit()?;
    Ok(pack_dir.join(format!("pack-{name}.pack")))
}

/// True when `objects/` holds a loose object.
pub fn has_loose_objects(objects: &Path) -> bool {
    let Ok(dirs) = std::fs::read_dir(objects) else {
        return false;
    };
    dirs.flatten().any(|d| {
        let name = d.file_name();
        let name = name.to_string_lossy();
        name.len() == 2
            && name.bytes().all(|b| b.is_ascii_hexdigit())
            && std::fs::read_dir(d.path()).is_ok_and(|mut e| e.next().is_some())
    })
}

/// The loose objects under `objects/` (written by berth before uploads were packs), with their
/// files.
pub fn loose_objects(objects: &Path) -> Vec<(Oid, PathBuf)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(objects).into_iter().flatten().flatten() {
        let prefix = dir.file_name().to_string_lossy().into_owned();
        if prefix.len() != 2 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        for file in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let rest = file.file_name().to_string_lossy().into_owned();
            if let Ok(oid) = Oid::from_str(&format!("{prefix}{rest}"))
                && rest.len() == 38
            {
                out.push((oid, file.path()));
            }
        }
    }
    out
}

/// The packs of `objects/pack` that have an index, sorted by name.
pub fn packs(objects: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(objects.join("pack"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack") && p.with_extension("idx").is_file())
        .collect();
    out.sort();
    out
}

/// Every object of the repository as one pack made by joining its packs, or `None` when some
/// object is loose (or a pack cannot be read), so the caller builds the pack instead.
pub fn joined(objects: &Path) -> Option<(Vec<u8>, usize)> {
    if has_loose_objects(objects) {
        return None;
    }
    let mut out = b"PACK\0\0\0\x02\0\0\0\0".to_vec();
    let mut count: u64 = 0;
    for path in packs(objects) {
        let data = std::fs::read(&path).ok()?;
        if data.len() < 32 || &data[..8] != b"PACK\0\0\0\x02" {
            return None;
        }
        count += u64::from(u32::from_be_bytes(data[8..12].try_into().ok()?));
        out.extend_from_slice(&data[12..data.len() - 20]);
    }
    if count == 0 {
        return None;
    }
    out[8..12].copy_from_slice(&u32::try_from(count).ok()?.to_be_bytes());
    let digest = sha1(&out);
    out.extend_from_slice(&digest);
    Some((out, usize::try_from(count).ok()?))
}

/// Packs a repository may gather (one per upload or push) before they are joined into one.
pub const MAX_PACKS: usize = 32;

/// How long a pack taken out of use, or a push's quarantine, is kept for readers that may still
/// have it open before it is removed.
const GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Joins the repository's packs into one (copied as they are, then indexed), and takes the old
/// ones out of use: their index goes at once (new readers no longer see them), their pack
/// files once [`GRACE`] has passed (readers that loaded the index may still read them). Also
/// removes push quarantines older than that, left by a master that stopped. Answers whether
/// the packs were joined.
pub fn consolidate(objects: &Path) -> Result<bool, git2::Error> {
    remove_stale(objects);
    let old = packs(objects);
    if old.len() < 2 {
        return Ok(false);
    }
    let Some((pack, _)) = joined(objects) else {
        return Ok(false);
    };
    let new = store(&objects.join("pack"), &pack)?;
    for path in old.into_iter().filter(|p| *p != new) {
        let _ = std::fs::remove_file(path.with_extension("idx"));
    }
    Ok(true)
}

fn remove_stale(objects: &Path) {
    let old = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > GRACE)
    };
    for entry in std::fs::read_dir(objects.join("pack"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pack")
            && !path.with_extension("idx").exists()
            && old(&path)
        {
            let _ = std::fs::remove_file(&path);
        }
    }
    for entry in std::fs::read_dir(objects).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with("incoming-") && old(&path) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Checks a received pack's declared sizes before anything inflates it: no object (nor a
/// delta's result) larger than `max_object`, and the sum of the inflated objects no larger
/// than `max_total`. Answers a reason when refused. Entries are walked by inflating each one
/// under the cap, so a pack that lies about a size is stopped as it goes.
pub fn check_sizes(pack: &[u8], max_object: u64, max_total: u64) -> Result<(), String> {
    if pack.len() < 32 || &pack[..4] != b"PACK" {
        return Err("not a pack file".into());
    }
    let version = u32::from_be_bytes(pack[4..8].try_into().expect("4 bytes"));
    if version != 2 && version != 3 {
        return Err(format!("unsupported pack version {version}"));
    }
    let count = u32::from_be_bytes(pack[8..12].try_into().expect("4 bytes"));
    let mut at = 12usize;
    let mut total: u64 = 0;
    let too_big =
        |what: &str, n: u64, cap: u64| format!("{what} of {n} bytes exceeds the cap of {cap}");
    for _ in 0..count {
        let mut byte = *pack.get(at).ok_or("truncated pack")?;
        at += 1;
        let kind = (byte >> 4) & 7;
        let mut size = u64::from(byte & 0x0f);
        let mut shift = 4;
        while byte & 0x80 != 0 {
            byte = *pack.get(at).ok_or("truncated pack")?;
            at += 1;
            if shift > 57 {
                return Err("object size overflows".into());
            }
            size |= u64::from(byte & 0x7f) << shift;
            shift += 7;
        }
        match kind {
            6 => {
                // OFS_DELTA: a varint offset.
                loop {
                    let b = *pack.get(at).ok_or("truncated pack")?;
                    at += 1;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
            }
            7 => at += 20,
            1..=4 => {}
            _ => return Err(format!("bad object type {kind} in pack")),
        }
        // A delta's own data may be a little larger than its result; the result is checked below.
        let cap = if kind >= 6 {
            max_object.max(1 << 20)
        } else {
            max_object
        };
        if size > cap {
            return Err(too_big("an object", size, cap));
        }
        let rest = pack.get(at..).ok_or("truncated pack")?;
        let mut z = flate2::Decompress::new(true);
        // Inflate to a sink, keeping the first bytes (a delta's header) and counting the rest.
        let mut head = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (before_in, before_out) = (z.total_in(), z.total_out());
            let status = z
                .decompress(
                    &rest[before_in as usize..],
                    &mut buf,
                    flate2::FlushDecompress::None,
                )
                .map_err(|e| format!("bad zlib data in pack: {e}"))?;
            let produced = (z.total_out() - before_out) as usize;
            if head.len() < 32 {
                head.extend_from_slice(&buf[..produced.min(32 - head.len())]);
            }
            if z.total_out() > size {
                return Err("an object inflates past its declared size".into());
            }
            if status == flate2::Status::StreamEnd {
                break;
            }
            if z.total_in() == before_in && produced == 0 {
                return Err("truncated pack".into());
            }
        }
        at += z.total_in() as usize;
        let inflated = if kind >= 6 {
            // A delta: base size, then result size, as varints.
            let mut pos = 0;
            let mut varint = || -> Result<u64, String> {
                let (mut v, mut s) = (0u64, 0);
                loop {
                    let b = *head.get(pos).ok_or("truncated delta")?;
                    pos += 1;
                    if s > 57 {
                        return Err("delta size overflows".to_string());
                    }
                    v |= u64::from(b & 0x7f) << s;
                    s += 7;
                    if b & 0x80 == 0 {
                        return Ok(v);
                    }
                }
            };
            let _base = varint()?;
            varint()?
        } else {
            size
        };
        if inflated > max_object {
            return Err(too_big("an object", inflated, max_object));
        }
        total = total.saturating_add(inflated);
        if total > max_total {
            return Err(too_big("the pack's objects", total, max_total));
        }
    }
    if pack.len() != at + 20 {
        return Err("data after the pack's objects".into());
    }
    Ok(())
}

/// SHA-1 (FIPS 180-4) of `data`, for pack trailers.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let bit_len = (data.len() as u64).wrapping_mul(8);
    let mut tail = Vec::with_capacity(128);
    let whole = data.len() / 64 * 64;
    tail.extend_from_slice(&data[whole..]);
    tail.push(0x80);
    while tail.len() % 64 != 56 {
        tail.push(0);
    }
    tail.extend_from_slice(&bit_len.to_be_bytes());
    for block in data[..whole].chunks_exact(64).chain(tail.chunks_exact(64)) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes(word.try_into().expect("4 bytes"));
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_known_digests() {
        let hex = |d: [u8; 20]| hex::encode(d);
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(hex(sha1(long)), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
        // Agrees with git's object hashing (a blob is `blob <len>\0<data>`).
        let data = vec![7u8; 1000];
        let mut framed = b"blob 1000\0".to_vec();
        framed.extend_from_slice(&data);
        let oid = Oid::hash_object(ObjectType::Blob, &data).unwrap();
        assert_eq!(hex(sha1(&framed)), oid.to_string());
    }

    #[test]
    fn written_pack_indexes_and_size_check_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::default();
        let big = vec![1u8; 300_000];
        for data in [&b"one"[..], b"two", &big] {
            let oid = Oid::hash_object(ObjectType::Blob, data).unwrap();
            w.add(ObjectType::Blob, oid, data).unwrap();
            w.add(ObjectType::Blob, oid, data).unwrap();
        }
        let pack = w.finish();
        check_sizes(&pack, 300_000, 400_000).unwrap();
        assert!(
            check_sizes(&pack, 299_999, 400_000)
                .unwrap_err()
                .contains("cap")
        );
        assert!(
            check_sizes(&pack, 300_000, 300_005)
                .unwrap_err()
                .contains("cap")
        );
        let path = store(&dir.path().join("pack"), &pack).unwrap();
        assert!(path.is_file());
        let odb = git2::Odb::new().unwrap();
        odb.add_disk_alternate(dir.path().to_str().unwrap())
            .unwrap();
        let oid = Oid::hash_object(ObjectType::Blob, &big).unwrap();
        assert_eq!(odb.read(oid).unwrap().data(), &big[..]);
        let (joined, count) = joined(dir.path()).unwrap();
        assert_eq!(count, 3);
        assert_eq!(joined, pack);
    }

    #[test]
    fn packs_are_joined_into_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Vec::new();
        for i in 0..3u8 {
            let mut w = PackWriter::default();
            let data = vec![i; 100];
            let oid = Oid::hash_object(ObjectType::Blob, &data).unwrap();
            w.add(ObjectType::Blob, oid, &data).unwrap();
            store(&dir.path().join("pack"), &w.finish()).unwrap();
            ids.push(oid);
        }
        assert_eq!(packs(dir.path()).len(), 3);
        assert!(consolidate(dir.path()).unwrap());
        assert_eq!(packs(dir.path()).len(), 1);
        let odb = git2::Odb::new().unwrap();
        odb.add_disk_alternate(dir.path().to_str().unwrap())
            .unwrap();
        for oid in ids {
            assert!(odb.exists(oid));
        }
        assert_eq!(joined(dir.path()).unwrap().1, 3);
        assert!(!consolidate(dir.path()).unwrap());
    }
}
