//! Proof that a request comes from a host of the cluster. A host that sends
//! a request on to another signs it: an HMAC-SHA256, under a key the hosts
//! share through the cluster's bucket, over the method, the target, the
//! host it is meant for, its headers, the client's address, the sending
//! host, the time, a nonce and the body's SHA-256. The receiving host
//! believes the client address only if the signature holds, the time is
//! within [`WINDOW`] of its own clock, and it has not seen the nonce in the
//! last two windows (a request is good for a window either side of its
//! time). The key itself never travels with a request; keys are rotated
//! (see [`KeyRing::rotated`]), and a request signed with a key the ring no
//! longer holds is refused.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// The header a signed request carries.
pub const HEADER: &str = "corral-forwarded";
/// How far a signed request's time may be from the receiver's clock: the
/// hosts' clocks must agree within this, and a captured request is useless
/// after it.
pub const WINDOW: Duration = Duration::from_secs(10);
/// A new key is used for signing only once it is this old, so every host
/// has seen it before the first request signed with it arrives.
const ACTIVATE_AFTER_MS: u64 = 5_000;
/// Nonces remembered at most, per [`WINDOW`]: past it, signed requests are
/// refused until the window turns, rather than memory growing.
const MAX_NONCES: usize = 1 << 20;

/// One signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardKey {
    pub id: String,
    /// 32 random bytes, hex.
    pub secret: String,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// The keys hosts accept, newest first: every key too new to sign with yet,
/// the one hosts sign with, and none older, so requests in flight across a
/// rotation still verify, however quickly rotations follow each other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    pub keys: Vec<ForwardKey>,
}

impl KeyRing {
    /// A ring of one new key.
    pub fn first(now_ms: u64) -> anyhow::Result<KeyRing> {
        Ok(KeyRing {
            keys: vec![new_key(1, now_ms)?],
        })
    }

    /// The ring after a rotation: a new key first, then the old keys down to
    /// the first one old enough to sign with (the one hosts sign with until
    /// the new key is), anything older dropped.
    pub fn rotated(&self, now_ms: u64) -> anyhow::Result<KeyRing> {
        let next_id = self
            .keys
            .iter()
            .filter_map(|k| k.id.strip_prefix('k')?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let mut keys = vec![new_key(next_id, now_ms)?];
        for key in &self.keys {
            keys.push(key.clone());
            if is_active(key, now_ms) {
                break;
            }
        }
        Ok(KeyRing { keys })
    }

    /// When the newest key was made.
    pub fn newest_ms(&self) -> Option<u64> {
        self.keys.first().map(|k| k.created_ms)
    }

    /// The key to sign with at `now_ms`: the newest one every host has had
    /// time to learn (the oldest, if none is that old).
    fn signing(&self, now_ms: u64) -> Option<&ForwardKey> {
        self.keys.iter().find(|key| is_active(key, now_ms)).or(self.keys.last())
    }

    fn get(&self, id: &str) -> Option<&ForwardKey> {
        self.keys.iter().find(|k| k.id == id)
    }
}

fn is_active(key: &ForwardKey, now_ms: u64) -> bool {
    now_ms.saturating_sub(key.created_ms) >= ACTIVATE_AFTER_MS
}

fn new_key(n: u64, now_ms: u64) -> anyhow::Result<ForwardKey> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness for the cluster's key: {e}"))?;
    Ok(ForwardKey {
        id: format!("k{n}"),
        secret: hex(&secret),
        created_ms: now_ms,
    })
}

/// What a signed request says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The host that sent it on.
    pub by: String,
    /// The client the sending host served.
    pub client: IpAddr,
    /// The SHA-256 of the body it was signed with, checked once the body is read.
    pub body_sha256: [u8; 32],
}

/// Why a signed request is not believed. What it says names no key and
/// no clock: the log at debug level has those (`Debug`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("its signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("it was signed with a key this cluster does not hold (rotated out, or never made)")]
    UnknownKey(String),
    #[error("its signature does not match")]
    BadSignature,
    #[error("it was signed too far from this host's clock (the hosts' clocks must agree within {} s)", WINDOW.as_secs())]
    Stale(u64),
    #[error("it was seen before: a replay")]
    Replayed,
    #[error("too many signed requests within {} s to remember; try again", WINDOW.as_secs())]
    TooMany,
    #[error("its body is not the one it was signed with")]
    BodyChanged,
}

impl Refused {
    /// A short name, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Malformed(_) => "malformed",
            Refused::UnknownKey(_) => "unknown-key",
            Refused::BadSignature => "bad-signature",
            Refused::Stale(_) => "stale",
            Refused::Replayed => "replayed",
            Refused::TooMany => "too-many",
            Refused::BodyChanged => "body-changed",
        }
    }
}

/// The request fields a signature covers besides the claim.
pub struct Target<'a> {
    pub method: &'a str,
    /// The path and query.
    pub target: &'a str,
    /// The host the request is meant for: a request captured on its way to
    /// one host is good at no other.
    pub to: &'a str,
    /// The SHA-256 of its end-to-end headers ([`headers_sha256`]).
    pub headers_sha256: [u8; 32],
}

/// The SHA-256 of `headers` (name and value pairs, the names lowercase),
/// ordered by name, each name's values in the order given.
pub fn headers_sha256<'h>(headers: impl Iterator<Item = (&'h str, &'h [u8])>) -> [u8; 32] {
    let mut sorted: Vec<(&str, &[u8])> = headers.collect();
    sorted.sort_by_key(|(name, _)| *name);
    let mut hash = Sha256::new();
    for (name, value) in sorted {
        hash.update(name.as_bytes());
        hash.update(b":");
        hash.update(value);
        hash.update(b"\n");
    }
    hash.finalize().into()
}

/// The header value that signs a request, with the ring's signing key.
pub fn sign(ring: &KeyRing, target: &Target<'_>, claim: &Claim, now_ms: u64) -> anyhow::Result<String> {
    let key = ring
        .signing(now_ms)
        .ok_or_else(|| anyhow::anyhow!("the cluster has no forwarding key"))?;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness for a nonce: {e}"))?;
    let nonce = hex(&nonce);
    let signature = mac(key, target, claim, now_ms, &nonce)?;
    Ok(format!(
        "v1;key={};by={};client={};at={now_ms};nonce={nonce};body={};sig={}",
        key.id,
        claim.by,
        claim.client,
        hex(&claim.body_sha256),
        hex(&signature)
    ))
}

/// Checks a signed request's header against the ring, the clock and the
/// nonces seen; what it claims, if it holds.
pub fn verify(
    ring: &KeyRing,
    nonces: &Nonces,
    header: &str,
    target: &Target<'_>,
    now_ms: u64,
) -> Result<Claim, Refused> {
    let fields = Fields::parse(header)?;
    let key = ring
        .get(fields.key)
        .ok_or_else(|| Refused::UnknownKey(fields.key.to_string()))?;
    let claim = Claim {
        by: fields.by.to_string(),
        client: fields.client.parse().map_err(|_| Refused::Malformed("client"))?,
        body_sha256: unhex::<32>(fields.body).ok_or(Refused::Malformed("body"))?,
    };
    let signature = unhex::<32>(fields.sig).ok_or(Refused::Malformed("sig"))?;
    let mut expected = keyed(key).map_err(|_| Refused::BadSignature)?;
    expected.update(&message(target, &claim, fields.at, fields.nonce));
    expected.verify_slice(&signature).map_err(|_| Refused::BadSignature)?;
    let skew = now_ms.abs_diff(fields.at);
    if skew > WINDOW.as_millis() as u64 {
        return Err(Refused::Stale(skew));
    }
    nonces.first_use(fields.nonce, now_ms)?;
    Ok(claim)
}

/// The fields of a signature header.
struct Fields<'a> {
    key: &'a str,
    by: &'a str,
    client: &'a str,
    at: u64,
    nonce: &'a str,
    body: &'a str,
    sig: &'a str,
}

impl<'a> Fields<'a> {
    fn parse(header: &'a str) -> Result<Fields<'a>, Refused> {
        let mut parts = header.split(';');
        if parts.next() != Some("v1") {
            return Err(Refused::Malformed("version"));
        }
        let (mut key, mut by, mut client, mut at, mut nonce, mut body, mut sig) =
            (None, None, None, None, None, None, None);
        for part in parts {
            let (name, value) = part.split_once('=').ok_or(Refused::Malformed("field"))?;
            let slot = match name {
                "key" => &mut key,
                "by" => &mut by,
                "client" => &mut client,
                "at" => &mut at,
                "nonce" => &mut nonce,
                "body" => &mut body,
                "sig" => &mut sig,
                _ => return Err(Refused::Malformed("field")),
            };
            if slot.replace(value).is_some() {
                return Err(Refused::Malformed("field"));
            }
        }
        let nonce = nonce.ok_or(Refused::Malformed("nonce"))?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refused::Malformed("nonce"));
        }
        Ok(Fields {
            key: key.ok_or(Refused::Malformed("key"))?,
            by: by.ok_or(Refused::Malformed("by"))?,
            client: client.ok_or(Refused::Malformed("client"))?,
            at: at.and_then(|a| a.parse().ok()).ok_or(Refused::Malformed("at"))?,
            nonce,
            body: body.ok_or(Refused::Malformed("body"))?,
            sig: sig.ok_or(Refused::Malformed("sig"))?,
        })
    }
}

fn keyed(key: &ForwardKey) -> anyhow::Result<HmacSha256> {
    let secret = unhex::<32>(&key.secret).ok_or_else(|| anyhow::anyhow!("key {} is not 32 hex bytes", key.id))?;
    HmacSha256::new_from_slice(&secret).map_err(|e| anyhow::anyhow!("{e}"))
}

fn mac(key: &ForwardKey, target: &Target<'_>, claim: &Claim, at: u64, nonce: &str) -> anyhow::Result<[u8; 32]> {
    let mut mac = keyed(key)?;
    mac.update(&message(target, claim, at, nonce));
    Ok(mac.finalize().into_bytes().into())
}

/// What is signed: every field on a line of its own, so none can run into
/// the next.
fn message(target: &Target<'_>, claim: &Claim, at: u64, nonce: &str) -> Vec<u8> {
    format!(
        "corral-forwarded-v1\n{}\n{}\n{}\n{}\n{}\n{}\n{at}\n{nonce}\n{}",
        target.method,
        target.target,
        target.to,
        hex(&target.headers_sha256),
        claim.client,
        claim.by,
        hex(&claim.body_sha256)
    )
    .into_bytes()
}

/// The SHA-256 of a body.
pub fn body_sha256(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// Nonces of signed requests seen within the last two to three
/// [`WINDOW`]s, in three generations of one window each: a request is good
/// from a window before its time to a window after, so a nonce is kept for
/// at least two windows after it is first seen; an older one is refused as
/// stale anyway.
#[derive(Default)]
pub struct Nonces {
    seen: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    /// When the current generation started, in ms since the Unix epoch.
    since_ms: u64,
    current: HashSet<u128>,
    older: [HashSet<u128>; 2],
}

impl Nonces {
    fn first_use(&self, nonce: &str, now_ms: u64) -> Result<(), Refused> {
        let nonce = u128::from_str_radix(nonce, 16).map_err(|_| Refused::Malformed("nonce"))?;
        let mut seen = self.seen.lock().expect("nonces lock");
        let window = WINDOW.as_millis() as u64;
        if seen.since_ms == 0 || now_ms.saturating_sub(seen.since_ms) >= 3 * window {
            *seen = Generations {
                since_ms: now_ms,
                ..Generations::default()
            };
        }
        while now_ms.saturating_sub(seen.since_ms) >= window {
            let current = std::mem::take(&mut seen.current);
            seen.older.swap(0, 1);
            seen.older[0] = current;
            seen.since_ms += window;
        }
        if seen.current.contains(&nonce) || seen.older.iter().any(|g| g.contains(&nonce)) {
            return Err(Refused::Replayed);
        }
        if seen.current.len() >= MAX_NONCES {
            return Err(Refused::TooMany);
        }
        seen.current.insert(nonce);
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn claim() -> Claim {
        Claim {
            by: "n2".into(),
            client: "203.0.113.7".parse().unwrap(),
            body_sha256: body_sha256(b"{}"),
        }
    }

    fn target() -> Target<'static> {
        Target {
            method: "POST",
            target: "/users?x=1",
            to: "n1",
            headers_sha256: headers_sha256([("content-type", b"application/json".as_slice())].into_iter()),
        }
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let ring = KeyRing::first(NOW).unwrap();
        let nonces = Nonces::default();
        let header = sign(&ring, &target(), &claim(), NOW).unwrap();
        assert_eq!(verify(&ring, &nonces, &header, &target(), NOW + 10), Ok(claim()));
        assert_eq!(
            verify(&ring, &nonces, &header, &target(), NOW + 20),
            Err(Refused::Replayed)
        );
    }

    #[test]
    fn anything_changed_breaks_the_signature() {
        let ring = KeyRing::first(NOW).unwrap();
        let header = sign(&ring, &target(), &claim(), NOW).unwrap();
        for other in [
            Target {
                method: "GET",
                ..target()
            },
            Target { to: "n3", ..target() },
            Target {
                headers_sha256: headers_sha256([("content-type", b"text/plain".as_slice())].into_iter()),
                ..target()
            },
        ] {
            assert_eq!(
                verify(&ring, &Nonces::default(), &header, &other, NOW),
                Err(Refused::BadSignature)
            );
        }
        let forged = header.replace("client=203.0.113.7", "client=203.0.113.8");
        assert_eq!(
            verify(&ring, &Nonces::default(), &forged, &target(), NOW),
            Err(Refused::BadSignature)
        );
        let another_ring = KeyRing::first(NOW).unwrap();
        assert_eq!(
            verify(&another_ring, &Nonces::default(), &header, &target(), NOW),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn old_requests_and_rotated_out_keys_are_refused() {
        let ring = KeyRing::first(NOW).unwrap();
        let header = sign(&ring, &target(), &claim(), NOW).unwrap();
        let late = NOW + WINDOW.as_millis() as u64 + 1;
        assert!(matches!(
            verify(&ring, &Nonces::default(), &header, &target(), late),
            Err(Refused::Stale(_))
        ));
        let later = NOW + ACTIVATE_AFTER_MS;
        let once = ring.rotated(later).unwrap();
        assert_eq!(once.keys.len(), 2);
        assert!(verify(&once, &Nonces::default(), &header, &target(), NOW).is_ok());
        let twice = once.rotated(later + ACTIVATE_AFTER_MS).unwrap();
        assert_eq!(
            verify(&twice, &Nonces::default(), &header, &target(), NOW),
            Err(Refused::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn a_nonce_is_kept_as_long_as_its_request_is_good() {
        let ring = KeyRing::first(NOW).unwrap();
        let nonces = Nonces::default();
        // Signed by a clock a window ahead: good until two windows on.
        let window = WINDOW.as_millis() as u64;
        let header = sign(&ring, &target(), &claim(), NOW + window).unwrap();
        assert!(verify(&ring, &nonces, &header, &target(), NOW).is_ok());
        for later in [window, 2 * window - 1] {
            assert_eq!(
                verify(&ring, &nonces, &header, &target(), NOW + later),
                Err(Refused::Replayed),
                "{later} ms on"
            );
        }
    }

    #[test]
    fn a_new_key_signs_only_once_every_host_had_time_to_learn_it() {
        let ring = KeyRing::first(NOW).unwrap().rotated(NOW).unwrap();
        assert_eq!(ring.signing(NOW + 1).unwrap().id, "k1");
        assert_eq!(ring.signing(NOW + ACTIVATE_AFTER_MS).unwrap().id, "k2");
    }

    #[test]
    fn rotations_in_quick_succession_keep_the_key_hosts_sign_with() {
        let start = NOW - ACTIVATE_AFTER_MS;
        let ring = KeyRing::first(start).unwrap();
        let once = ring.rotated(NOW).unwrap();
        let twice = once.rotated(NOW + 1).unwrap();
        let ids = |ring: &KeyRing| ring.keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&twice), ["k3", "k2", "k1"]);
        // Hosts that have not read either rotation still sign with k1, and
        // hosts that have read both sign with it too until k2 is old enough.
        let header = sign(&ring, &target(), &claim(), NOW + 2).unwrap();
        assert!(verify(&twice, &Nonces::default(), &header, &target(), NOW + 2).is_ok());
        assert_eq!(twice.signing(NOW + 2).unwrap().id, "k1");
        assert_eq!(twice.signing(NOW + ACTIVATE_AFTER_MS).unwrap().id, "k2");
        // A rotation keeps no key older than the one hosts sign with.
        let settled = twice.rotated(NOW + ACTIVATE_AFTER_MS).unwrap();
        assert_eq!(ids(&settled), ["k4", "k3", "k2"]);
        let settled = twice.rotated(NOW + 1 + ACTIVATE_AFTER_MS).unwrap();
        assert_eq!(ids(&settled), ["k4", "k3"]);
    }

    #[test]
    fn malformed_headers_are_refused_without_panicking() {
        let ring = KeyRing::first(NOW).unwrap();
        for header in [
            "",
            "v2;key=k1",
            "v1;key=k1;key=k1",
            "v1;key=k1;by=n;client=1.2.3.4;at=1;nonce=zz;body=00;sig=00",
            "v1;key=k1;by=n;client=x;at=1;nonce=00000000000000000000000000000000;body=00;sig=00",
        ] {
            assert!(
                verify(&ring, &Nonces::default(), header, &target(), NOW).is_err(),
                "{header}"
            );
        }
    }
}
