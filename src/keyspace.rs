//! Keyspaces: named collections of keys, each with a mode fixed at creation.
//!
//! A keyspace's mode decides which side of the CAP trade-off its data takes:
//! `cp` keyspaces go through Raft and stay linearizable; `ap` keyspaces stay writable on every
//! side of a partition and converge by last-writer-wins. The definitions themselves are cluster
//! metadata and always go through Raft.
//!
//! Caveats: keyspaces cannot be dropped or renamed yet, and a mode cannot be changed.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::limits::{KEYSPACE_NAME_BYTES_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
pub use crate::mode::Mode;

/// A keyspace definition as stored in the replicated metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyspaceDef {
    pub name: String,
    pub mode: Mode,
    /// Raft log index of the entry that created it.
    pub created_revision: u64,
}

/// Checks a keyspace name against `[a-z][a-z0-9_-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::InvalidInput(format!(
            "keyspace name '{}' is invalid: {why}; names match [a-z][a-z0-9_-]{{0,62}}",
            shown(name)
        )))
    };
    let Some(first) = name.bytes().next() else {
        return bad("it is empty");
    };
    if name.len() > KEYSPACE_NAME_BYTES_MAX {
        return bad(&format!(
            "it is {} bytes long, the limit is {KEYSPACE_NAME_BYTES_MAX}",
            name.len()
        ));
    }
    if !first.is_ascii_lowercase() {
        return bad("it must start with a lowercase letter");
    }
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    if !name.bytes().all(ok) {
        return bad("it may only hold lowercase letters, digits, '_' and '-'");
    }
    Ok(())
}

/// `name` escaped and cut to a little over the name limit, for an error message: the message
/// travels back in a gRPC header, and one that echoed a 64 KiB name whole would exceed the
/// client's header limit, so the client would see a protocol error instead of the reason.
fn shown(name: &str) -> String {
    let cut: String = name.chars().take(KEYSPACE_NAME_BYTES_MAX + 1).collect();
    let ellipsis = if cut.len() < name.len() { "..." } else { "" };
    format!("{}{ellipsis}", cut.escape_default())
}

/// Checks a key against the size limit; empty keys are refused too.
pub fn validate_key(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidInput(
            "the key is empty; keys need at least one byte".into(),
        ));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Error::InvalidInput(format!(
            "the key is {} bytes, over the limit of {KEY_BYTES_MAX} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a value against the size limit.
pub fn validate_value(value: &[u8]) -> Result<(), Error> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::InvalidInput(format!(
            "the value is {} bytes, over the limit of {VALUE_BYTES_MAX} bytes (1 MiB)",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_huge_bad_name_is_not_echoed_whole() {
        let name = "\u{1}".repeat(64 * 1024);
        let err = validate_name(&name).unwrap_err().to_string();
        assert!(err.len() < 1024, "{} bytes of error message", err.len());
        assert!(err.contains("...") && err.contains("65536 bytes long"), "{err}");
        let err = validate_name("Bank").unwrap_err().to_string();
        assert!(err.contains("'Bank'") && !err.contains("..."), "{err}");
    }

    #[test]
    fn names_follow_the_pattern() {
        for good in ["a", "bank", "carts-2", "a_b", &"a".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good} should be valid");
        }
        for bad in ["", "Bank", "1abc", "a b", "-a", "a.b", &"a".repeat(64), "é"] {
            assert!(validate_name(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn keys_and_values_have_limits() {
        assert!(validate_key(b"").is_err());
        assert!(validate_key(&vec![b'k'; KEY_BYTES_MAX]).is_ok());
        assert!(validate_key(&vec![b'k'; KEY_BYTES_MAX + 1]).is_err());
        assert!(validate_value(b"").is_ok());
        assert!(validate_value(&vec![0; VALUE_BYTES_MAX]).is_ok());
        assert!(validate_value(&vec![0; VALUE_BYTES_MAX + 1]).is_err());
    }

    proptest! {
        #[test]
        fn valid_names_are_exactly_the_pattern(name in "[a-zA-Z0-9_. -]{0,70}") {
            let re_ok = !name.is_empty()
                && name.len() <= 63
                && name.as_bytes()[0].is_ascii_lowercase()
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            prop_assert_eq!(validate_name(&name).is_ok(), re_ok);
        }
    }
}
