//! Passwords, tokens and peer proofs. Computed in the node, never in core: only a
//! password *hash* enters the log, and core checks a token's account generation and
//! logout epoch when it applies a command.
//!
//! A token is `hex(payload).hex(mac)` with payload `v1|user|generation|epoch|expiry_us`
//! and mac = HMAC-SHA256(cluster secret, payload). Every node holds the same secret, so
//! a token minted by one is valid on all of them after a failover; it dies when it
//! expires, when its account is deleted (generation) and on logout (epoch).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
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

/// An argon2id hash in PHC format, salted from the OS. CPU-heavy: call it off the
/// async runtime's worker threads.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    check_password_size(password)?;
    let mut salt_bytes = [0u8; 16];
    salt_bytes.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Hashing(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hashing(e.to_string()))
}

pub fn verify_password(password: &str, hash: &str) -> Result<(), AuthError> {
    let parsed = PasswordHash::new(hash).map_err(|_| AuthError::WrongPassword)?;
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .map_err(|_| AuthError::WrongPassword)
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
        let hash = hash_password("hunter2").expect("hash");
        assert!(!hash.contains("hunter2"));
        verify_password("hunter2", &hash).expect("right password");
        assert_eq!(
            verify_password("hunter3", &hash),
            Err(AuthError::WrongPassword)
        );
    }

    #[test]
    fn peer_proofs_bind_the_sender() {
        let proof = secret().peer_proof(3);
        assert!(secret().verify_peer_proof(3, &proof));
        assert!(!secret().verify_peer_proof(4, &proof));
    }
}
