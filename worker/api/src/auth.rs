//! How master and worker authenticate each other without the cluster token on the wire.
//!
//! Every `/v1/stacks` request carries `X-Berth-Date` (Unix seconds), `X-Berth-Nonce` (random,
//! hex) and `X-Berth-Signature`: hex HMAC-SHA256, keyed with the cluster token, over the method,
//! the path with its query, the SHA-256 of the body, the date and the nonce. The worker accepts a
//! request only when the signature matches (compared in constant time), the date is within
//! [`MAX_SKEW`] of its clock and the nonce was not seen in that window, so a captured request
//! cannot be replayed nor altered. [`WorkerClient`](crate::WorkerClient) signs every request it
//! sends; the worker (and any stand-in) checks them with [`Verifier`] (with the `server` feature,
//! as one axum middleware, [`require_signature`], so every route behind it is covered).
//!
//! A worker proves it holds the token before the master places anything on it: `GET
//! /healthz?challenge=<nonce>` answers `X-Berth-Proof`, the HMAC of the master's fresh challenge
//! and the worker's node name ([`health_proof`]). A catalog entry that cannot answer it gets no
//! instance, so no request and no git credential.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::Secret;

/// Unix seconds at which the request was signed.
pub const DATE_HEADER: &str = "x-berth-date";
/// A random value, unique per request.
pub const NONCE_HEADER: &str = "x-berth-nonce";
/// Hex HMAC-SHA256 of the request (see the module documentation).
pub const SIGNATURE_HEADER: &str = "x-berth-signature";
/// The worker's answer to a health challenge.
pub const PROOF_HEADER: &str = "x-berth-proof";
/// Largest clock difference between master and worker a request may show.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// Largest request body the signature check reads.
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest nonce or challenge accepted.
const MAX_NONCE: usize = 128;

type HmacSha256 = Hmac<Sha256>;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("request is not signed with the cluster token")]
    Missing,
    #[error("request date is more than 60 s away from the worker's clock")]
    Skew,
    #[error("bad request signature")]
    BadSignature,
    #[error("request already seen")]
    Replayed,
}

/// The three headers of a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub date: u64,
    pub nonce: String,
    pub signature: String,
}

/// A MAC over length-prefixed parts, so no two part lists share an input.
fn mac(key: &Secret, parts: &[&[u8]]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(key.expose().as_bytes()).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

fn request_parts<'a>(
    method: &'a str,
    path_and_query: &'a str,
    body_digest: &'a [u8],
    date: &'a str,
    nonce: &'a str,
) -> [&'a [u8]; 6] {
    [
        b"berth-request-v1",
        method.as_bytes(),
        path_and_query.as_bytes(),
        body_digest,
        date.as_bytes(),
        nonce.as_bytes(),
    ]
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh random nonce (also used as a health challenge).
pub fn nonce() -> String {
    let mut raw = [0u8; 16];
    rand::fill(&mut raw[..]);
    hex::encode(raw)
}

/// Signs one request at `date` with `nonce`.
pub fn sign(
    key: &Secret,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    date: u64,
    nonce: &str,
) -> Signature {
    let digest = Sha256::digest(body);
    let date_s = date.to_string();
    let mac = mac(
        key,
        &request_parts(method, path_and_query, &digest, &date_s, nonce),
    );
    Signature {
        date,
        nonce: nonce.to_owned(),
        signature: hex::encode(mac.finalize().into_bytes()),
    }
}

/// Signs one request now, with a fresh nonce.
pub fn sign_now(key: &Secret, method: &str, path_and_query: &str, body: &[u8]) -> Signature {
    sign(key, method, path_and_query, body, unix_now(), &nonce())
}

/// The worker's proof that it holds `key`: the HMAC of the master's `challenge` and its `node`.
pub fn health_proof(key: &Secret, challenge: &str, node: &str) -> String {
    let mac = mac(
        key,
        &[b"berth-health-v1", challenge.as_bytes(), node.as_bytes()],
    );
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `proof` answers `challenge` for `node` under `key` (constant time).
pub fn check_health_proof(key: &Secret, challenge: &str, node: &str, proof: &str) -> bool {
    let Ok(raw) = hex::decode(proof) else {
        return false;
    };
    mac(
        key,
        &[b"berth-health-v1", challenge.as_bytes(), node.as_bytes()],
    )
    .verify_slice(&raw)
    .is_ok()
}

/// Checks signed requests and remembers their nonces for the skew window.
#[derive(Debug)]
pub struct Verifier {
    key: Secret,
    /// Nonce -> the date it was signed at; entries older than the window are pruned.
    seen: Mutex<HashMap<String, u64>>,
}

impl Verifier {
    pub fn new(key: Secret) -> Self {
        Self {
            key,
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn key(&self) -> &Secret {
        &self.key
    }

    /// Checks one request as received at `now` (Unix seconds): its headers, its method, its
    /// path with query and its whole body.
    pub fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        headers: (Option<&str>, Option<&str>, Option<&str>),
        now: u64,
    ) -> Result<(), AuthError> {
        let (Some(date_s), Some(nonce), Some(signature)) = headers else {
            return Err(AuthError::Missing);
        };
        if self.key.is_empty() || nonce.is_empty() || nonce.len() > MAX_NONCE {
            return Err(AuthError::Missing);
        }
        let date: u64 = date_s.parse().map_err(|_| AuthError::Missing)?;
        if date.abs_diff(now) > MAX_SKEW.as_secs() {
            return Err(AuthError::Skew);
        }
        let raw = hex::decode(signature).map_err(|_| AuthError::BadSignature)?;
        let digest = Sha256::digest(body);
        mac(
            &self.key,
            &request_parts(method, path_and_query, &digest, date_s, nonce),
        )
        .verify_slice(&raw)
        .map_err(|_| AuthError::BadSignature)?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 4096 {
            let oldest = now.saturating_sub(MAX_SKEW.as_secs());
            seen.retain(|_, d| *d >= oldest);
        }
        if seen.insert(nonce.to_owned(), date).is_some() {
            return Err(AuthError::Replayed);
        }
        Ok(())
    }
}

#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
pub use server::{proof_headers, require_signature};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_table() {
        let key = Secret::new("k");
        let now = 1_000_000;
        let good = sign(&key, "POST", "/v1/stacks/a/build", b"{}", now, "n1");
        let date = good.date.to_string();
        fn h<'a>(
            date: &'a str,
            s: &'a Signature,
        ) -> (Option<&'a str>, Option<&'a str>, Option<&'a str>) {
            (
                Some(date),
                Some(s.nonce.as_str()),
                Some(s.signature.as_str()),
            )
        }
        // (what, method, path, body, headers, now, expected)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a [u8],
            (Option<&'a str>, Option<&'a str>, Option<&'a str>),
            u64,
            Result<(), AuthError>,
        );
        let wrong_key = sign(
            &Secret::new("x"),
            "POST",
            "/v1/stacks/a/build",
            b"{}",
            now,
            "n2",
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "unsigned",
                "POST",
                "/v1/stacks/a/build",
                b"{}",
                (None, None, None),
                now,
                Err(AuthError::Missing),
            ),
            (
                "other body",
                "POST",
                "/v1/stacks/a/build",
                b"{ }",
                h(&date, &good),
                now,
                Err(AuthError::BadSignature),
            ),
            (
                "other path",
                "POST",
                "/v1/stacks/b/build",
                b"{}",
                h(&date, &good),
                now,
                Err(AuthError::BadSignature),
            ),
            (
                "other method",
                "GET",
                "/v1/stacks/a/build",
                b"{}",
                h(&date, &good),
                now,
                Err(AuthError::BadSignature),
            ),
            (
                "other key",
                "POST",
                "/v1/stacks/a/build",
                b"{}",
                h(&date, &wrong_key),
                now,
                Err(AuthError::BadSignature),
            ),
            (
                "too late",
                "POST",
                "/v1/stacks/a/build",
                b"{}",
                h(&date, &good),
                now + 61,
                Err(AuthError::Skew),
            ),
            (
                "too early",
                "POST",
                "/v1/stacks/a/build",
                b"{}",
                h(&date, &good),
                now - 61,
                Err(AuthError::Skew),
            ),
            (
                "good",
                "POST",
                "/v1/stacks/a/build",
                b"{}",
                h(&date, &good),
                now + 60,
                Ok(()),
            ),
            (
                "replayed",
                "POST",
                "/v1/stacks/a/build",
                b"{}",
                h(&date, &good),
                now + 1,
                Err(AuthError::Replayed),
            ),
        ];
        let verifier = Verifier::new(key);
        for (what, method, path, body, headers, at, want) in cases {
            assert_eq!(
                verifier.verify(method, path, body, headers, at),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn health_proof_binds_challenge_and_node() {
        let key = Secret::new("k");
        let proof = health_proof(&key, "c1", "node-a");
        assert!(check_health_proof(&key, "c1", "node-a", &proof));
        assert!(!check_health_proof(&key, "c2", "node-a", &proof));
        assert!(!check_health_proof(&key, "c1", "node-b", &proof));
        assert!(!check_health_proof(
            &Secret::new("x"),
            "c1",
            "node-a",
            &proof
        ));
        assert!(!check_health_proof(&key, "c1", "node-a", "zz"));
    }
}
