//! Per-instance, short-lived, read-only clone credentials for workers, in place of the
//! store-wide git token: `v1.<expiry>.<hex HMAC-SHA256>` of the repository (`user/id`) and the
//! expiry (Unix seconds), keyed with the code-store token, which itself never leaves the master.
//! One credential opens only its own repository, only for fetching, and only until it expires.

use berth_model::ValidName;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use berth_kit::Secret;

/// How long a credential handed to a worker for one build stays valid.
pub const TTL_SECS: u64 = 15 * 60;
/// The basic-auth user name sent with a credential (any name is accepted).
pub const USERNAME: &str = "berth-instance";

fn mac(key: &Secret, user: &ValidName, id: &ValidName, expiry: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    for part in [
        &b"berth-clone-v1"[..],
        user.as_str().as_bytes(),
        id.as_str().as_bytes(),
        expiry.to_string().as_bytes(),
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// A credential for fetching `user/id` until `expiry` (Unix seconds).
pub fn issue(key: &Secret, user: &ValidName, id: &ValidName, expiry: u64) -> Secret {
    let tag = hex::encode(mac(key, user, id, expiry).finalize().into_bytes());
    Secret::new(format!("v1.{expiry}.{tag}"))
}

/// Whether `presented` is a credential for `user/id` that has not expired at `now`; the tag is
/// compared in constant time.
pub fn check(key: &Secret, user: &ValidName, id: &ValidName, presented: &str, now: u64) -> bool {
    let Some(rest) = presented.strip_prefix("v1.") else {
        return false;
    };
    let Some((expiry, tag)) = rest.split_once('.') else {
        return false;
    };
    let (Ok(expiry), Ok(tag)) = (expiry.parse::<u64>(), hex::decode(tag)) else {
        return false;
    };
    !key.is_empty() && now <= expiry && mac(key, user, id, expiry).verify_slice(&tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_table() {
        let key = Secret::new("k");
        let n = |s: &str| ValidName::parse("id", s).unwrap();
        let good = issue(&key, &n("alice"), &n("shop"), 100);
        let other_key = issue(&Secret::new("x"), &n("alice"), &n("shop"), 100);
        // (user, id, credential, now, accepted)
        let cases = [
            ("alice", "shop", good.expose(), 100, true),
            ("alice", "shop", good.expose(), 101, false),
            ("alice", "other", good.expose(), 50, false),
            ("bob", "shop", good.expose(), 50, false),
            ("alice", "shop", other_key.expose(), 50, false),
            ("alice", "shop", "v1.999999999.00", 50, false),
            ("alice", "shop", "k", 50, false),
        ];
        for (user, id, cred, now, want) in cases {
            assert_eq!(
                check(&key, &n(user), &n(id), cred, now),
                want,
                "{user}/{id} {cred} {now}"
            );
        }
    }
}
