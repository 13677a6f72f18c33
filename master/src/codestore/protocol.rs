//! The read side of git's smart protocol (v0/v1, stateless RPC as used over HTTP), natively:
//! pkt-lines, the ref advertisement, want/have negotiation with `multi_ack_detailed` and
//! `no-done`, and a pack holding what the client lacks: for a clone, the repository's stored
//! packs joined as they are; for a fetch, one built by git2's `PackBuilder`.
//!
//! This module knows bytes, not HTTP: [`advertise`] answers `info/refs?service=git-upload-pack`
//! and [`upload_pack`] answers one `POST .../git-upload-pack` body. A client asking for protocol
//! v2 gets the v0 advertisement, which git clients accept as a fallback.

use std::collections::BTreeSet;

use git2::{Oid, Repository};

use super::MAIN_REF;

/// Capabilities offered in the advertisement. `allow-reachable-sha1-in-want` lets workers fetch
/// one commit by id (every object of an instance's repository belongs to that instance).
const CAPABILITIES: &str = "multi_ack_detailed no-done side-band side-band-64k ofs-delta \
                            allow-tip-sha1-in-want allow-reachable-sha1-in-want no-progress";

/// Largest pkt-line payload on side-band-64k (65520 minus length and band byte).
const SIDEBAND_64K_DATA: usize = 65515;
/// Largest pkt-line payload on plain side-band (1000 minus length and band byte).
const SIDEBAND_DATA: usize = 995;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed pkt-line: {0}")]
    Malformed(&'static str),
    #[error("unexpected line {0:?}")]
    Unexpected(String),
    #[error("not our ref {0}")]
    NotOurRef(String),
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
}

/// Appends one pkt-line holding `data`.
pub fn pkt(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
    out.extend_from_slice(data);
}

/// Appends a flush-pkt.
pub fn flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

/// The body of `GET info/refs?service=git-upload-pack`.
pub fn advertise(repo: &Repository, agent: &str) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    pkt(&mut out, b"# service=git-upload-pack\n");
    flush(&mut out);
    let mut refs: Vec<(String, Oid)> = Vec::new();
    for r in repo.references_glob("refs/heads/*")? {
        let r = r?;
        if let (Ok(name), Some(oid)) = (r.name(), r.target()) {
            refs.push((name.to_owned(), oid));
        }
    }
    refs.sort();
    let head = refs.iter().find(|(n, _)| n == MAIN_REF).map(|(_, o)| *o);
    let caps = match head {
        Some(_) => format!("{CAPABILITIES} symref=HEAD:{MAIN_REF} agent={agent}"),
        None => format!("{CAPABILITIES} agent={agent}"),
    };
    let mut lines: Vec<(String, Oid)> = Vec::new();
    if let Some(head) = head {
        lines.push(("HEAD".to_owned(), head));
    }
    lines.extend(refs);
    if lines.is_empty() {
        let line = format!("{} capabilities^{{}}\0{caps}\n", Oid::ZERO_SHA1);
        pkt(&mut out, line.as_bytes());
    }
    for (i, (name, oid)) in lines.iter().enumerate() {
        let line = if i == 0 {
            format!("{oid} {name}\0{caps}\n")
        } else {
            format!("{oid} {name}\n")
        };
        pkt(&mut out, line.as_bytes());
    }
    flush(&mut out);
    Ok(out)
}

/// One parsed pkt-line.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    Flush,
    Data(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Result<Option<Line<'a>>, ProtocolError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf.len() < 4 {
            return Err(ProtocolError::Malformed("truncated length"));
        }
        let len = std::str::from_utf8(&self.buf[..4])
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or(ProtocolError::Malformed("bad length"))?;
        match len {
            0 => {
                self.buf = &self.buf[4..];
                Ok(Some(Line::Flush))
            }
            1..=3 => Err(ProtocolError::Malformed(
                "delim or response-end packet in v0",
            )),
            _ if len > self.buf.len() => Err(ProtocolError::Malformed("truncated line")),
            _ => {
                let data = &self.buf[4..len];
                self.buf = &self.buf[len..];
                let data = data.strip_suffix(b"\n").unwrap_or(data);
                Ok(Some(Line::Data(data)))
            }
        }
    }
}

fn parse_oid(hex: &[u8]) -> Result<Oid, ProtocolError> {
    let s = std::str::from_utf8(hex).map_err(|_| ProtocolError::Malformed("object id"))?;
    if s.len() != 40 {
        return Err(ProtocolError::Malformed("object id"));
    }
    Oid::from_str(s).map_err(|_| ProtocolError::Malformed("object id"))
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Ack {
    #[default]
    Single,
    Detailed,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Band {
    #[default]
    None,
    Small,
    Large,
}

/// What a finished [`upload_pack`] sent, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackStats {
    /// Objects in the pack, `None` when the round ended without a pack (more negotiation).
    pub objects: Option<usize>,
    pub pack_bytes: usize,
}

/// Answers one stateless-RPC `git-upload-pack` request body.
pub fn upload_pack(
    repo: &Repository,
    request: &[u8],
) -> Result<(Vec<u8>, PackStats), ProtocolError> {
    let mut reader = Reader { buf: request };
    let mut wants: Vec<Oid> = Vec::new();
    let (mut ack, mut band, mut no_done) = (Ack::Single, Band::None, false);
    let odb = repo.odb()?;
    // Wants, the first carrying the client's capabilities, up to a flush.
    loop {
        match reader.next()? {
            None if wants.is_empty() => return Ok((Vec::new(), PackStats::default())),
            None => {
                return Err(ProtocolError::Malformed(
                    "request ended inside the want list",
                ));
            }
            Some(Line::Flush) => break,
            Some(Line::Data(line)) => {
                let rest = line
                    .strip_prefix(b"want ")
                    .ok_or_else(|| unexpected(line))?;
                let (hex, caps) = rest.split_at(rest.len().min(40));
                let oid = parse_oid(hex)?;
                if wants.is_empty() {
                    for cap in caps.split(|b| *b == b' ') {
                        match cap {
                            b"multi_ack_detailed" => ack = Ack::Detailed,
                            b"side-band-64k" => band = Band::Large,
                            b"side-band" if band == Band::None => band = Band::Small,
                            b"no-done" => no_done = true,
                            _ => {}
                        }
                    }
                }
                if !odb.exists(oid) || repo.find_commit(oid).is_err() {
                    let mut out = Vec::new();
                    pkt(
                        &mut out,
                        format!("ERR upload-pack: not our ref {oid}\n").as_bytes(),
                    );
                    return Ok((out, PackStats::default()));
                }
                wants.push(oid);
            }
        }
    }
    if wants.is_empty() {
        // A bare flush: the client already has everything.
        return Ok((Vec::new(), PackStats::default()));
    }
    let mut out = Vec::new();
    let mut common: BTreeSet<Oid> = BTreeSet::new();
    let mut last: Option<Oid> = None;
    let (mut got_common, mut got_other, mut sent_ready) = (false, false, false);
    loop {
        match reader.next()? {
            None => {
                return Err(ProtocolError::Malformed(
                    "request ended inside the have list",
                ));
            }
            Some(Line::Flush) => {
                if ack == Ack::Detailed
                    && got_common
                    && !got_other
                    && ok_to_give_up(repo, &wants, &common)?
                    && let Some(last) = last
                {
                    sent_ready = true;
                    pkt(&mut out, format!("ACK {last} ready\n").as_bytes());
                }
                if common.is_empty() || ack == Ack::Detailed {
                    pkt(&mut out, b"NAK\n");
                }
                if no_done && sent_ready {
                    if let Some(last) = last {
                        pkt(&mut out, format!("ACK {last}\n").as_bytes());
                    }
                    break;
                }
                // Stateless RPC: the client sends the next round as a new request.
                return Ok((out, PackStats::default()));
            }
            Some(Line::Data(b"done")) => {
                match (last, ack) {
                    (Some(last), Ack::Detailed) => {
                        pkt(&mut out, format!("ACK {last}\n").as_bytes())
                    }
                    (Some(_), Ack::Single) => {}
                    (None, _) => pkt(&mut out, b"NAK\n"),
                }
                break;
            }
            Some(Line::Data(line)) => {
                let hex = line
                    .strip_prefix(b"have ")
                    .ok_or_else(|| unexpected(line))?;
                let oid = parse_oid(hex)?;
                if odb.exists(oid) && repo.find_commit(oid).is_ok() {
                    got_common = true;
                    last = Some(oid);
                    let first = common.is_empty();
                    common.insert(oid);
                    match ack {
                        Ack::Detailed => pkt(&mut out, format!("ACK {oid} common\n").as_bytes()),
                        Ack::Single if first => pkt(&mut out, format!("ACK {oid}\n").as_bytes()),
                        Ack::Single => {}
                    }
                } else {
                    got_other = true;
                    if ack == Ack::Detailed && ok_to_give_up(repo, &wants, &common)? {
                        sent_ready = true;
                        pkt(&mut out, format!("ACK {oid} ready\n").as_bytes());
                    }
                }
            }
        }
    }
    // A clone gets the stored packs as they are; a fetch gets a pack of what it lacks.
    let joined = if common.is_empty() {
        super::pack::joined(&repo.path().join("objects"))
    } else {
        None
    };
    let pack = match joined {
        Some(pack) => pack,
        None => build_pack(repo, &wants, &common)?,
    };
    let stats = PackStats {
        objects: Some(pack.1),
        pack_bytes: pack.0.len(),
    };
    match band {
        Band::None => out.extend_from_slice(&pack.0),
        Band::Small | Band::Large => {
            let size = if band == Band::Large {
                SIDEBAND_64K_DATA
            } else {
                SIDEBAND_DATA
            };
            let mut frame = Vec::with_capacity(size + 1);
            for chunk in pack.0.chunks(size) {
                frame.clear();
                frame.push(1);
                frame.extend_from_slice(chunk);
                pkt(&mut out, &frame);
            }
            flush(&mut out);
        }
    }
    Ok((out, stats))
}

fn unexpected(line: &[u8]) -> ProtocolError {
    ProtocolError::Unexpected(String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned())
}

/// True when every want reaches a commit the client has, so negotiation can stop.
fn ok_to_give_up(
    repo: &Repository,
    wants: &[Oid],
    common: &BTreeSet<Oid>,
) -> Result<bool, git2::Error> {
    for want in wants {
        let mut reached = common.contains(want);
        for have in common {
            if reached {
                break;
            }
            reached = repo.graph_descendant_of(*want, *have)?;
        }
        if !reached {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A pack of everything reachable from `wants` and not from `common`; answers bytes and count.
fn build_pack(
    repo: &Repository,
    wants: &[Oid],
    common: &BTreeSet<Oid>,
) -> Result<(Vec<u8>, usize), git2::Error> {
    let mut walk = repo.revwalk()?;
    for want in wants {
        walk.push(*want)?;
    }
    for have in common {
        walk.hide(*have)?;
    }
    let mut pb = repo.packbuilder()?;
    // 0: one delta-search thread per CPU (libgit2 is built with threads).
    pb.set_threads(0);
    pb.insert_walk(&mut walk)?;
    let mut buf = git2::Buf::new();
    pb.write_buf(&mut buf)?;
    Ok((buf.to_vec(), pb.object_count()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codestore::CodeStore;
    use crate::upload::{TreeEntry, UploadTree};
    use berth_worker_api::ValidName;

    /// A repository with two commits; answers (repo dir guard, first, second).
    fn two_commits() -> (tempfile::TempDir, Repository, Oid, Oid) {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path());
        let (u, i) = (
            ValidName::parse("u", "u").unwrap(),
            ValidName::parse("i", "i").unwrap(),
        );
        let mut tree = UploadTree::default();
        let put = |tree: &mut UploadTree, data: &[u8]| {
            tree.entries.insert(
                "compose.yaml".into(),
                TreeEntry::File {
                    data: data.to_vec(),
                    executable: false,
                },
            );
        };
        put(&mut tree, b"one");
        let c1 = store.commit(&u, &i, &tree, "1").unwrap().commit;
        put(&mut tree, b"two");
        let c2 = store.commit(&u, &i, &tree, "2").unwrap().commit;
        let repo = store.open(&u, &i).unwrap();
        (
            dir,
            repo,
            Oid::from_str(&c1).unwrap(),
            Oid::from_str(&c2).unwrap(),
        )
    }

    fn request(lines: &[String], done: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut in_haves = false;
        for line in lines {
            if line.starts_with("have ") && !in_haves {
                flush(&mut out);
                in_haves = true;
            }
            pkt(&mut out, format!("{line}\n").as_bytes());
        }
        if !in_haves {
            flush(&mut out);
        }
        if done {
            pkt(&mut out, b"done\n");
        } else {
            flush(&mut out);
        }
        out
    }

    #[test]
    fn negotiation_table() {
        let (_dir, repo, c1, c2) = two_commits();
        let detailed = format!("want {c2} multi_ack_detailed side-band-64k ofs-delta");
        let nodone = format!("want {c2} multi_ack_detailed no-done side-band-64k");
        let plain = format!("want {c2}");
        let unknown = "0123456789012345678901234567890123456789";
        // (request lines, done, expected response prefix lines, objects in the pack)
        type Case = (Vec<String>, bool, Vec<String>, Option<usize>);
        let cases: Vec<Case> = vec![
            // Clone: no haves, done.
            (vec![detailed.clone()], true, vec!["NAK".into()], Some(6)),
            // A round ending in a flush answers ACKs and NAK, no pack.
            (
                vec![
                    detailed.clone(),
                    format!("have {unknown}"),
                    format!("have {c1}"),
                ],
                false,
                vec![format!("ACK {c1} common"), "NAK".into()],
                None,
            ),
            // Incremental: only the new commit, its tree and blob.
            (
                vec![detailed.clone(), format!("have {c1}")],
                true,
                vec![format!("ACK {c1} common"), format!("ACK {c1}")],
                Some(3),
            ),
            // no-done: ready, then the pack without waiting for done.
            (
                vec![nodone, format!("have {c1}")],
                false,
                vec![
                    format!("ACK {c1} common"),
                    format!("ACK {c1} ready"),
                    "NAK".into(),
                    format!("ACK {c1}"),
                ],
                Some(3),
            ),
            // No multi_ack: first common ACKed once; pack without band.
            (
                vec![plain, format!("have {c1}")],
                true,
                vec![format!("ACK {c1}")],
                Some(3),
            ),
        ];
        for (lines, done, expect, objects) in cases {
            let (out, stats) = upload_pack(&repo, &request(&lines, done)).unwrap();
            let mut r = Reader { buf: &out };
            for want in &expect {
                match r.next().unwrap() {
                    Some(Line::Data(d)) => {
                        assert_eq!(String::from_utf8_lossy(d), *want, "{lines:?}")
                    }
                    other => panic!("{lines:?}: {other:?}"),
                }
            }
            assert_eq!(stats.objects, objects, "{lines:?}");
            if objects.is_some() {
                assert!(stats.pack_bytes > 0);
            }
        }
        let (out, _) = upload_pack(&repo, &request(&[format!("want {unknown}")], true)).unwrap();
        assert!(String::from_utf8_lossy(&out).contains("ERR upload-pack: not our ref"));
        assert!(upload_pack(&repo, b"0009bogus\n0000").is_err());
        assert_eq!(upload_pack(&repo, b"0000").unwrap().0, b"");
    }

    #[test]
    fn pkt_lines_roundtrip() {
        let mut out = Vec::new();
        pkt(&mut out, b"want x\n");
        flush(&mut out);
        assert_eq!(out, b"000bwant x\n0000");
        let mut r = Reader { buf: &out };
        assert_eq!(r.next().unwrap(), Some(Line::Data(b"want x")));
        assert_eq!(r.next().unwrap(), Some(Line::Flush));
        assert_eq!(r.next().unwrap(), None);
        for bad in [&b"00"[..], b"zzzz", b"0001", b"00ffabc"] {
            assert!(Reader { buf: bad }.next().is_err(), "{bad:?}");
        }
    }
}
