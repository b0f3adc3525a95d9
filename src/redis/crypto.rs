//! Encryption of stored messages, compatible with channels_redis's `symmetric_encryption_keys`
//! ([contract §3.6](crate::contract)).
//!
//! Each configured key, of any length, is hashed with SHA-256; the 32-byte digest, encoded as
//! URL-safe base64, is a Fernet key (its first half signs with HMAC-SHA256, its second half
//! encrypts with AES-128-CBC). Messages are encrypted with the first key and decrypted with
//! whichever key authenticates them, so keys can be rotated by prepending the new one.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use fernet::{Fernet, MultiFernet};
use sha2::{Digest as _, Sha256};

use crate::error::BuildError;

/// How far in the future a token's timestamp may be (Fernet's allowance for clock skew).
const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// The first byte of every Fernet token.
const TOKEN_VERSION: u8 = 0x80;

/// Base64 characters that encode a token's version byte and 8-byte timestamp (9 bytes).
const TOKEN_HEADER_CHARS: usize = 12;

/// The Fernet keys derived from `symmetric_encryption_keys`.
#[derive(Clone)]
pub(crate) struct Crypto {
    fernet: MultiFernet,
    keys: usize,
}

/// A stored message could not be decrypted. Python raises `InvalidToken` for all of these;
/// they are told apart here so that an expired message is counted as expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecryptError {
    /// The bytes are not a Fernet token.
    #[error("not a Fernet token")]
    Malformed,
    /// The token is older than the time to live.
    #[error("token older than its time to live")]
    Expired,
    /// The token's timestamp is more than a minute in the future.
    #[error("token dated in the future")]
    FromTheFuture,
    /// No key authenticates the token (wrong keys, or tampered bytes).
    #[error("no key authenticates the token")]
    Rejected,
}

impl Crypto {
    /// Derives a Fernet key from each of `keys` (text keys are taken as their UTF-8 bytes, as
    /// Python does).
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOption`] when `keys` is empty.
    pub(crate) fn new(keys: &[impl AsRef<[u8]>]) -> Result<Crypto, BuildError> {
        if keys.is_empty() {
            return Err(BuildError::invalid_option(
                "symmetric_encryption_keys",
                "[]",
                "at least one key is needed",
            ));
        }
        let fernets = keys
            .iter()
            .map(|key| {
                // A SHA-256 digest always makes a valid key; the error is for form's sake.
                Fernet::new(&derive_key(key.as_ref())).ok_or_else(|| {
                    BuildError::invalid_option(
                        "symmetric_encryption_keys",
                        "<redacted>",
                        "cannot derive a Fernet key",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Crypto {
            keys: fernets.len(),
            fernet: MultiFernet::new(fernets),
        })
    }

    /// Encrypts `plain` with the first key; returns the Fernet token (ASCII, URL-safe base64
    /// with padding), as Python stores it.
    pub(crate) fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        self.fernet.encrypt(plain).into_bytes()
    }

    /// Decrypts a token with whichever key authenticates it, refusing a token older than `ttl`
    /// (or dated more than a minute ahead).
    ///
    /// # Errors
    ///
    /// See [`DecryptError`].
    pub(crate) fn decrypt(&self, token: &[u8], ttl: Duration) -> Result<Vec<u8>, DecryptError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.decrypt_at(token, ttl, now)
    }

    /// [`Crypto::decrypt`] with the current Unix time (whole seconds) given.
    ///
    /// The timestamp checks are done here rather than by the `fernet` crate: its TTL check adds
    /// the token's (untrusted) timestamp to the TTL unchecked, which overflows on a forged
    /// token, and it takes whole seconds. Python compares `timestamp + ttl < now` with `now` in
    /// whole seconds, which is the same as comparing with the TTL's whole seconds.
    fn decrypt_at(&self, token: &[u8], ttl: Duration, now: u64) -> Result<Vec<u8>, DecryptError> {
        let token = std::str::from_utf8(token).map_err(|_| DecryptError::Malformed)?;
        let timestamp = token_timestamp(token).ok_or(DecryptError::Malformed)?;
        if timestamp.saturating_add(ttl.as_secs()) < now {
            return Err(DecryptError::Expired);
        }
        if now.saturating_add(MAX_CLOCK_SKEW_SECS) < timestamp {
            return Err(DecryptError::FromTheFuture);
        }
        // Checks the signature with each key in turn, then decrypts.
        self.fernet
            .decrypt(token)
            .map_err(|_| DecryptError::Rejected)
    }
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// The Fernet key channels_redis derives from a configured key: URL-safe base64 (padded) of
/// the key's SHA-256 digest.
fn derive_key(key: &[u8]) -> String {
    URL_SAFE.encode(Sha256::digest(key))
}

/// The timestamp of a Fernet token (big-endian seconds after the version byte), read from its
/// first 12 base64 characters without decoding the rest. `None` when the token does not start
/// like a Fernet token.
fn token_timestamp(token: &str) -> Option<u64> {
    let header = token.get(..TOKEN_HEADER_CHARS)?;
    let mut bytes = [0u8; 9];
    let n = URL_SAFE_NO_PAD.decode_slice(header, &mut bytes).ok()?;
    if n != bytes.len() || bytes[0] != TOKEN_VERSION {
        return None;
    }
    let mut timestamp = [0u8; 8];
    timestamp.copy_from_slice(&bytes[1..]);
    Some(u64::from_be_bytes(timestamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(70);

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn derives_the_same_key_as_channels_redis() {
        assert_eq!(
            derive_key(b"a-test-key"),
            "vQHTG9CFHUSqb8quMxeiDkUMwWkp8zurx5IirXypqVI="
        );
    }

    #[test]
    fn empty_key_list_is_refused() {
        let err = Crypto::new(&[] as &[&str]).unwrap_err();
        assert!(matches!(err, BuildError::InvalidOption { .. }), "{err:?}");
    }

    #[test]
    fn round_trip() {
        let crypto = Crypto::new(&["a-test-key"]).unwrap();
        let plain = b"\x83\xa1a\xc3\xa1b\xc0\xa1c\x81\xa1d\x90";
        let token = crypto.encrypt(plain);
        assert_ne!(&token[..], &plain[..]);
        assert!(token.is_ascii());
        // 0x80 encodes as "g" in base64; Python's tokens start "gAAAAA" too.
        assert!(token.starts_with(b"gAAAAA"), "{}", token.escape_ascii());
        assert_eq!(crypto.decrypt(&token, TTL).unwrap(), plain);
        // Empty plaintexts are fine too.
        assert_eq!(crypto.decrypt(&crypto.encrypt(b""), TTL).unwrap(), b"");
    }

    #[test]
    fn keys_as_bytes_or_text_agree() {
        let text = Crypto::new(&["k\u{e9}y"]).unwrap();
        let bytes = Crypto::new(&["k\u{e9}y".as_bytes().to_vec()]).unwrap();
        let token = text.encrypt(b"hi");
        assert_eq!(bytes.decrypt(&token, TTL).unwrap(), b"hi");
    }

    #[test]
    fn key_rotation() {
        let old = Crypto::new(&["k2"]).unwrap();
        let rotated = Crypto::new(&["k1", "k2"]).unwrap();
        let token = old.encrypt(b"payload");
        assert_eq!(rotated.decrypt(&token, TTL).unwrap(), b"payload");
        // New messages use the first key, which the old configuration does not know.
        let token = rotated.encrypt(b"payload");
        assert_eq!(old.decrypt(&token, TTL), Err(DecryptError::Rejected));
        assert_eq!(
            Crypto::new(&["k1"]).unwrap().decrypt(&token, TTL).unwrap(),
            b"payload"
        );
    }

    #[test]
    fn wrong_key_fails() {
        let token = Crypto::new(&["right"]).unwrap().encrypt(b"payload");
        let wrong = Crypto::new(&["wrong"]).unwrap();
        assert_eq!(wrong.decrypt(&token, TTL), Err(DecryptError::Rejected));
    }

    #[test]
    fn tampered_token_fails() {
        let crypto = Crypto::new(&["a-test-key"]).unwrap();
        let token = crypto.encrypt(b"some payload that spans blocks....");
        // Change one base64 character at a time, past the header (timestamp) part.
        for i in TOKEN_HEADER_CHARS..token.len() {
            let mut bad = token.clone();
            if bad[i] == b'=' {
                continue;
            }
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert!(crypto.decrypt(&bad, TTL).is_err(), "byte {i} changed");
        }
        // Truncations too.
        for n in 0..token.len() - 1 {
            assert!(crypto.decrypt(&token[..n], TTL).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn expired_token_fails() {
        let crypto = Crypto::new(&["a-test-key"]).unwrap();
        let token = crypto.encrypt(b"payload");
        let sent = token_timestamp(std::str::from_utf8(&token).unwrap()).unwrap();
        assert!(sent.abs_diff(now()) <= 1);
        // Exactly at the TTL still decrypts (Python: expired when timestamp + ttl < now).
        assert!(crypto.decrypt_at(&token, TTL, sent + 70).is_ok());
        assert_eq!(
            crypto.decrypt_at(&token, TTL, sent + 71),
            Err(DecryptError::Expired)
        );
        // Fractional TTLs behave like Python's: 70.5 s is still expired one second after 70.
        let ttl = Duration::from_secs_f64(70.5);
        assert!(crypto.decrypt_at(&token, ttl, sent + 70).is_ok());
        assert_eq!(
            crypto.decrypt_at(&token, ttl, sent + 71),
            Err(DecryptError::Expired)
        );
    }

    #[test]
    fn token_from_the_future_fails() {
        let crypto = Crypto::new(&["a-test-key"]).unwrap();
        let token = crypto.encrypt(b"payload");
        let sent = token_timestamp(std::str::from_utf8(&token).unwrap()).unwrap();
        assert!(crypto.decrypt_at(&token, TTL, sent - 60).is_ok());
        assert_eq!(
            crypto.decrypt_at(&token, TTL, sent - 61),
            Err(DecryptError::FromTheFuture)
        );
    }

    /// A forged header with a huge timestamp must not overflow anything.
    #[test]
    fn forged_timestamps_do_not_panic() {
        let crypto = Crypto::new(&["a-test-key"]).unwrap();
        for timestamp in [0, 1, u64::MAX - 60, u64::MAX - 1, u64::MAX] {
            let mut raw = vec![TOKEN_VERSION];
            raw.extend_from_slice(&timestamp.to_be_bytes());
            raw.extend_from_slice(&[0u8; 16 + 16 + 32]);
            let token = URL_SAFE.encode(&raw);
            assert!(crypto.decrypt(token.as_bytes(), Duration::MAX).is_err());
            assert!(crypto.decrypt(token.as_bytes(), TTL).is_err());
            assert!(crypto.decrypt_at(token.as_bytes(), TTL, u64::MAX).is_err());
        }
    }

    #[test]
    fn garbage_fails_without_panic() {
        use rand::rngs::StdRng;
        use rand::{Rng as _, SeedableRng as _};

        let crypto = Crypto::new(&["a-test-key"]).unwrap();
        let fixed: [&[u8]; 7] = [
            b"",
            b"g",
            b"gAAAAA",
            b"gAAAAAAAAAAA",
            b"\xff\xfe\x00",
            b"not base64 at all!!!!!!!!!!!!!!!!!",
            b"====================",
        ];
        for token in fixed {
            assert!(
                crypto.decrypt(token, TTL).is_err(),
                "{}",
                token.escape_ascii()
            );
        }
        let seed = 0x5eed_c0de;
        let mut rng = StdRng::seed_from_u64(seed);
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=";
        for i in 0..2_000 {
            let len = rng.random_range(0..200);
            let token: Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| rng.random()).collect()
            } else {
                // Base64-looking, starting like a real token so the later checks run.
                let mut t = b"gAAAAA".to_vec();
                t.extend((0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())]));
                t
            };
            assert!(
                crypto.decrypt(&token, TTL).is_err(),
                "seed {seed:#x}, iteration {i}: {}",
                token.escape_ascii()
            );
        }
    }
}
