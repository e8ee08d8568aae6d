//! Stateless checks on commands and queries.
//!
//! The leader runs these before a command enters the log, so junk never takes up log
//! space, and `apply` runs them again because a log may hold anything (an older leader's
//! rules, a bug, a corrupted but CRC-valid record). They look only at the command itself,
//! so every replica reaches the same verdict.

use super::limits::{
    BODY_BYTES_MAX, DELETE_IDS_MAX, PASSWORD_HASH_BYTES_MAX, PATTERN_BYTES_MAX, READ_LIMIT_MAX,
    USERNAME_BYTES_MAX, USERNAME_BYTES_MIN,
};
use super::{AppError, Auth, Command, Query};

// A username must fit its bounds, and every valid name must have at least one byte to
// carry the "starts with a letter or digit" rule.
const _: () = assert!(USERNAME_BYTES_MIN >= 1);
const _: () = assert!(USERNAME_BYTES_MIN <= USERNAME_BYTES_MAX);
// A pattern can always spell out a full username literally.
const _: () = assert!(PATTERN_BYTES_MAX >= USERNAME_BYTES_MAX);
const _: () = assert!(READ_LIMIT_MAX >= 1);
const _: () = assert!(DELETE_IDS_MAX >= 1);

pub(crate) fn validate_command(command: &Command) -> Result<(), AppError> {
    match command {
        Command::CreateAccount {
            user,
            password_hash,
            registration: _,
        } => {
            validate_username(user)?;
            validate_password_hash(password_hash)
        }
        Command::OpenSession { auth }
        | Command::Logout { auth }
        | Command::DeleteAccount { auth } => validate_auth(auth),
        Command::Send { auth, to, body } => {
            validate_auth(auth)?;
            validate_username(to)?;
            validate_body(body)
        }
        Command::ReadMessages { auth, limit } => {
            validate_auth(auth)?;
            validate_read_limit(*limit)
        }
        Command::DeleteMessages { auth, ids } => {
            validate_auth(auth)?;
            validate_range(
                "message id count",
                ids.len() as u64,
                1,
                DELETE_IDS_MAX as u64,
            )
        }
    }
}

pub(crate) fn validate_query(query: &Query) -> Result<(), AppError> {
    match query {
        Query::ListAccounts { pattern, page: _ } => validate_pattern(pattern),
        Query::Credentials { user } => validate_username(user),
        Query::UnreadCount { auth } => validate_auth(auth),
        Query::MessagesAfter {
            auth,
            after: _,
            limit,
        } => {
            validate_auth(auth)?;
            validate_read_limit(*limit)
        }
    }
}

/// Usernames are ASCII so that their length in bytes and in characters agree, they sort
/// the same everywhere, and they cannot hide look-alike Unicode characters.
pub(crate) fn validate_username(name: &str) -> Result<(), AppError> {
    let invalid = |reason: String| AppError::InvalidUsername {
        name: name.to_owned(),
        reason,
    };
    let size_bytes = name.len();
    if size_bytes < USERNAME_BYTES_MIN {
        return Err(invalid(format!(
            "too short: {size_bytes} bytes, at least {USERNAME_BYTES_MIN} required"
        )));
    }
    if size_bytes > USERNAME_BYTES_MAX {
        return Err(invalid(format!(
            "too long: {size_bytes} bytes, at most {USERNAME_BYTES_MAX} allowed"
        )));
    }
    if let Some(bad) = name.chars().find(|&c| !is_username_char(c)) {
        return Err(invalid(format!(
            "character {bad:?} is not allowed; use letters, digits, '_', '.' and '-'"
        )));
    }
    let starts_well = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if !starts_well {
        return Err(invalid("must start with a letter or a digit".to_owned()));
    }
    Ok(())
}

fn is_username_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The shell computes the hash; this only bounds what it may store.
fn validate_password_hash(password_hash: &str) -> Result<(), AppError> {
    if password_hash.is_empty() || password_hash.len() > PASSWORD_HASH_BYTES_MAX {
        return Err(AppError::InvalidPasswordHash);
    }
    Ok(())
}

/// A token naming a user that could never exist cannot be valid. It is refused as
/// unauthenticated rather than as a bad name, like every other bad token.
fn validate_auth(auth: &Auth) -> Result<(), AppError> {
    validate_username(&auth.user).map_err(|_| AppError::Unauthenticated)
}

fn validate_body(body: &str) -> Result<(), AppError> {
    if body.is_empty() {
        return Err(AppError::EmptyBody);
    }
    if body.len() > BODY_BYTES_MAX {
        return Err(AppError::BodyTooLarge {
            size_bytes: body.len(),
            max_bytes: BODY_BYTES_MAX,
        });
    }
    Ok(())
}

fn validate_read_limit(limit: u32) -> Result<(), AppError> {
    validate_range("limit", u64::from(limit), 1, u64::from(READ_LIMIT_MAX))
}

pub(crate) fn validate_pattern(pattern: &str) -> Result<(), AppError> {
    if pattern.len() > PATTERN_BYTES_MAX {
        return Err(AppError::InvalidPattern(format!(
            "{} bytes; the limit is {PATTERN_BYTES_MAX}",
            pattern.len()
        )));
    }
    Ok(())
}

fn validate_range(what: &str, got: u64, min: u64, max: u64) -> Result<(), AppError> {
    if got < min || got > max {
        return Err(AppError::OutOfRange {
            what: what.to_owned(),
            min,
            max,
            got,
        });
    }
    Ok(())
}
