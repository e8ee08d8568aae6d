//! Passwords, tokens and peer proofs. Computed in the node, never in core: only a
//! password *hash* enters the log, and core checks a token's account generation and
//! logout epoch when it applies a command.
//!
//! A token is `hex(payload).hex(mac)` with payload `v1|user|generation|epoch|expiry_us`
//! and mac = HMAC-SHA256(cluster secret, payload). Every node holds the same secret, so
//! a token minted by one is valid on all of them after a failover; it dies when it
//! expires, when its account is deleted (generation) and on logout (epoch).

use argon2::password_hash::{self, Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use chat_core::app::Auth;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const PASSWORD_BYTES_MIN: usize = 1;
pub const PASSWORD_BYTES_MAX: usize = 1_024;
pub const SECRET_BYTES_MIN: usize = 16;
const TOKEN_VERSION: &str = "v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("password must be {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes")]
    BadPassword,
    #[error("wrong username or password")]
    WrongPassword,
    #[error("invalid token: log in again")]
    InvalidToken,
    #[error("token expired: log in again")]
    Expired,
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// The cluster secret: keys tokens and peer proofs.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    pub auth: Auth,
    pub expires_at_us: u64,
}

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Result<Secret, String> {
        if bytes.len() < SECRET_BYTES_MIN {
            return Err(format!(
                "the cluster secret must be at least {SECRET_BYTES_MIN} bytes"
            ));
        }
        Ok(Secret(bytes))
    }

    fn mac(&self, domain: &str, data: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(domain.as_bytes());
        mac.update(b"\0");
        mac.update(data);
        mac
    }

    pub fn mint_token(&self, auth: &Auth, expires_at_us: u64) -> String {
        let payload = format!(
            "{TOKEN_VERSION}|{}|{}|{}|{expires_at_us}",
            auth.user, auth.generation, auth.token_epoch
        );
        let tag = self
            .mac("token", payload.as_bytes())
            .finalize()
            .into_bytes();
        format!("{}.{}", hex(payload.as_bytes()), hex(&tag))
    }

    /// Verifies the signature first, then the expiry against `now_us` (Unix µs).
    pub fn verify_token(&self, token: &str, now_us: u64) -> Result<TokenClaims, AuthError> {
        let (payload_hex, tag_hex) = token.split_once('.').ok_or(AuthError::InvalidToken)?;
        let payload = unhex(payload_hex).ok_or(AuthError::InvalidToken)?;
        let tag = unhex(tag_hex).ok_or(AuthError::InvalidToken)?;
        self.mac("token", &payload)
            .verify_slice(&tag)
            .map_err(|_| AuthError::InvalidToken)?;
        let payload = String::from_utf8(payload).map_err(|_| AuthError::InvalidToken)?;
        let fields: Vec<&str> = payload.split('|').collect();
        let [version, user, generation, epoch, expiry] = fields[..] else {
            return Err(AuthError::InvalidToken);
        };
        if version != TOKEN_VERSION {
            return Err(AuthError::InvalidToken);
        }
        let parse = |s: &str| s.parse::<u64>().map_err(|_| AuthError::InvalidToken);
        let claims = TokenClaims {
            auth: Auth {
                user: user.to_owned(),
                generation: parse(generation)?,
                token_epoch: parse(epoch)?,
            },
            expires_at_us: parse(expiry)?,
        };
        if now_us >= claims.expires_at_us {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }

    /// What a peer puts in its calls to prove it knows the secret, without sending it.
    pub fn peer_proof(&self, from: u64) -> String {
        hex(&self
            .mac("peer", from.to_string().as_bytes())
            .finalize()
            .into_bytes())
    }

    /// What an operator's tool (chatctl, given the secret file) puts in admin calls.
    /// Static like a peer proof: over a network without TLS it can be replayed, which is
    /// why SECURITY.md asks for TLS or a trusted network.
    pub fn admin_proof(&self) -> String {
        hex(&self.mac("admin", b"operator").finalize().into_bytes())
    }

    pub fn verify_admin_proof(&self, proof: &str) -> bool {
        unhex(proof).is_some_and(|tag| self.mac("admin", b"operator").verify_slice(&tag).is_ok())
    }

    pub fn verify_peer_proof(&self, from: u64, proof: &str) -> bool {
        unhex(proof).is_some_and(|tag| {
            self.mac("peer", from.to_string().as_bytes())
                .verify_slice(&tag)
                .is_ok()
        })
    }
}

pub fn check_password_size(password: &str) -> Result<(), AuthError> {
    if (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        Ok(())
    } else {
        Err(AuthError::BadPassword)
    }
}

/// The argon2id parameters of every new password hash: the argon2 crate's defaults,
/// OWASP's minimum for argon2id (19 MiB of memory, 2 passes, 1 lane). Changing them
/// changes [`HASH_MEMORY_BYTES`], hence the hash pool's peak memory (see `hashing`).
pub const PASSWORD_HASH_PARAMS: Params = Params::DEFAULT;
/// The memory one hash fills: `m_cost` blocks of 1 KiB, 19 MiB with the defaults. A
/// worker keeps one such buffer for its whole life and reuses it for every hash, so the
/// pool's peak is this times its workers however many requests come.
pub const HASH_MEMORY_BYTES: usize = PASSWORD_HASH_PARAMS.block_count() * Block::SIZE;
/// Output bytes of a new hash (the PHC default).
const HASH_OUTPUT_BYTES: usize = Params::DEFAULT_OUTPUT_LEN;
const SALT_BYTES: usize = 16;

/// Memory blocks for argon2, kept by a hashing thread between hashes.
///
/// Allocating 19 MiB per hash on many short-lived threads is what left a node at 3 GB
/// after a login flood: glibc keeps freed memory in per-thread arenas (and after the
/// first large free it raises its mmap threshold, so later buffers come from those
/// arenas). One buffer per long-lived thread never goes back to the allocator.
#[derive(Default)]
pub struct HashMemory(Vec<Block>);

impl HashMemory {
    /// The first `block_count` blocks, allocated on first use (a node that never hashes,
    /// such as a follower, never pays for them). Never more than one hash with
    /// [`PASSWORD_HASH_PARAMS`] needs: a stored hash that asks for more is refused.
    fn blocks(&mut self, block_count: usize) -> Result<&mut [Block], AuthError> {
        if block_count > PASSWORD_HASH_PARAMS.block_count() {
            return Err(AuthError::Hashing(format!(
                "the stored hash asks for {block_count} KiB, over the {} KiB allowed",
                PASSWORD_HASH_PARAMS.block_count()
            )));
        }
        if self.0.len() < block_count {
            self.0.resize(block_count, Block::default());
        }
        Ok(&mut self.0[..block_count])
    }
}

/// An argon2id hash in PHC format (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`), salted
/// from the OS, computed in `memory`. CPU-heavy (tens of ms): run it on the hash pool,
/// never on the async runtime's workers.
pub fn hash_password(password: &str, memory: &mut HashMemory) -> Result<String, AuthError> {
    check_password_size(password)?;
    let hashing = |e: argon2::Error| AuthError::Hashing(e.to_string());
    let phc = |e: password_hash::Error| AuthError::Hashing(e.to_string());
    // A v4 UUID: 122 random bits from the OS, the 16 bytes argon2 recommends.
    let salt_bytes: [u8; SALT_BYTES] = uuid::Uuid::new_v4().into_bytes();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(phc)?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, PASSWORD_HASH_PARAMS);
    let mut output = [0u8; HASH_OUTPUT_BYTES];
    let blocks = memory.blocks(PASSWORD_HASH_PARAMS.block_count())?;
    argon2
        .hash_password_into_with_memory(password.as_bytes(), &salt_bytes, &mut output, blocks)
        .map_err(hashing)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&PASSWORD_HASH_PARAMS).map_err(phc)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&output).map_err(phc)?),
    };
    Ok(hash.to_string())
}

/// Checks `password` against a PHC hash made by [`hash_password`] (or by the argon2
/// crate's own `PasswordHasher`: the format is the same), computing in `memory`. The
/// comparison is constant-time (`password_hash::Output`'s equality).
pub fn verify_password(
    password: &str,
    hash: &str,
    memory: &mut HashMemory,
) -> Result<(), AuthError> {
    let parsed = PasswordHash::new(hash).map_err(|_| AuthError::WrongPassword)?;
    let invalid = |e: password_hash::Error| AuthError::Hashing(format!("stored hash: {e}"));
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(invalid)?;
    let version = match parsed.version {
        Some(version) => Version::try_from(version).map_err(|e| invalid(e.into()))?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(invalid)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(AuthError::Hashing(
            "stored hash has no salt or output".to_owned(),
        ));
    };
    let mut salt_buffer = [0u8; Salt::MAX_LENGTH];
    let salt = salt.decode_b64(&mut salt_buffer).map_err(invalid)?;
    let mut output = vec![0u8; expected.len()];
    let blocks = memory.blocks(params.block_count())?;
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut output, blocks)
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    if Output::new(&output).map_err(invalid)? == expected {
        Ok(())
    } else {
        Err(AuthError::WrongPassword)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new(b"0123456789abcdef0123".to_vec()).expect("long enough")
    }

    fn alice() -> Auth {
        Auth {
            user: "alice".to_owned(),
            generation: 7,
            token_epoch: 2,
        }
    }

    #[test]
    fn token_round_trips_and_expires() {
        let token = secret().mint_token(&alice(), 1_000);
        let claims = secret().verify_token(&token, 999).expect("valid");
        assert_eq!(claims.auth, alice());
        assert_eq!(
            secret().verify_token(&token, 1_000),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn forged_tokens_are_refused() {
        let token = secret().mint_token(&alice(), 1_000);
        let other = Secret::new(b"another secret of enough bytes".to_vec()).expect("long");
        assert_eq!(other.verify_token(&token, 0), Err(AuthError::InvalidToken));
        let (_, tag) = token.split_once('.').expect("two parts");
        let forged = format!("{}.{tag}", hex(b"v1|alice|7|2|99999999"));
        assert_eq!(
            secret().verify_token(&forged, 0),
            Err(AuthError::InvalidToken)
        );
        assert_eq!(
            secret().verify_token("garbage", 0),
            Err(AuthError::InvalidToken)
        );
    }

    #[test]
    fn passwords_hash_and_verify() {
        let mut memory = HashMemory::default();
        let hash = hash_password("hunter2", &mut memory).expect("hash");
        assert!(!hash.contains("hunter2"));
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        verify_password("hunter2", &hash, &mut memory).expect("right password");
        assert_eq!(
            verify_password("hunter3", &hash, &mut memory),
            Err(AuthError::WrongPassword)
        );
        // One buffer, reused: it never grows past one hash's memory.
        assert_eq!(memory.0.len() * Block::SIZE, HASH_MEMORY_BYTES);
    }

    /// Hashes already in logs and snapshots were made by the argon2 crate's own hasher:
    /// they must verify the same way, and ours must verify there.
    #[test]
    fn hashes_are_the_argon2_crates_phc_strings() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let mut memory = HashMemory::default();
        let salt = SaltString::encode_b64(&[7u8; SALT_BYTES]).expect("salt");
        let theirs = Argon2::default()
            .hash_password(b"hunter2", &salt)
            .expect("hash")
            .to_string();
        verify_password("hunter2", &theirs, &mut memory).expect("their hash verifies");
        let ours = hash_password("hunter2", &mut memory).expect("hash");
        let parsed = PasswordHash::new(&ours).expect("PHC string");
        Argon2::default()
            .verify_password(b"hunter2", &parsed)
            .expect("our hash verifies there");
    }

    #[test]
    fn a_stored_hash_asking_for_more_memory_is_refused() {
        use argon2::password_hash::PasswordHasher;
        let params = Params::new(2 * PASSWORD_HASH_PARAMS.m_cost(), 1, 1, None).expect("params");
        let salt = SaltString::encode_b64(&[7u8; SALT_BYTES]).expect("salt");
        let greedy = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"hunter2", &salt)
            .expect("hash")
            .to_string();
        let mut memory = HashMemory::default();
        assert!(matches!(
            verify_password("hunter2", &greedy, &mut memory),
            Err(AuthError::Hashing(_))
        ));
        assert!(memory.0.is_empty(), "nothing was allocated for it");
    }

    #[test]
    fn peer_proofs_bind_the_sender() {
        let proof = secret().peer_proof(3);
        assert!(secret().verify_peer_proof(3, &proof));
        assert!(!secret().verify_peer_proof(4, &proof));
    }
}
