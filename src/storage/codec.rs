//! The on-disk and on-wire encoding of Rust values: bincode 2 over serde, standard config.
//!
//! Byte fields that can be large (keys and values) are marked `#[serde(with = "serde_bytes")]`:
//! serde otherwise hands a `Vec<u8>` to bincode one byte at a time, which costs tens of
//! milliseconds per MiB in a debug build and blocked the async workers while a leader encoded
//! megabytes of log entries. Both forms write the same bytes (a length, then the bytes), so
//! records written before the marking still decode.
//!
//! Decoding takes bytes a peer sent, so it must refuse anything without panicking or aborting.
//! bincode allocates a string's bytes as soon as it has read the string's length prefix; without
//! a limit, one forged prefix (2^60) made the allocator abort the whole node. [`decode`] runs
//! with bincode's limit [`DECODE_CLAIM_BYTES_MAX`], which refuses a claim before allocating it.
//!
//! Caveats: there is no format version inside each record; a format change needs a migration.
//! A record whose decoded size exceeds the limit (only conceivable for a snapshot stored in one
//! value by capkv before snapshot files, converted once at start-up) does not decode.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::limits::PEER_MESSAGE_BYTES_MAX;

/// Encodes a value; encoding our own types into a Vec cannot fail.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("bincode encodes every capkv type into a Vec")
}

/// A record that does not decode: corrupt on disk, or malformed on the wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("a record does not decode: {0}")]
    Malformed(String),
    #[error("a record has {0} trailing bytes")]
    TrailingBytes(usize),
}

/// Most bytes one [`decode`] may claim: bincode counts every decoded value at its in-memory size
/// (a `u64` as 8 bytes however short its varint) and every string at its length. One encoded
/// byte claims at most 8, so every message under [`PEER_MESSAGE_BYTES_MAX`] decodes, while a
/// forged length prefix is refused before anything of its size is allocated.
pub const DECODE_CLAIM_BYTES_MAX: usize = 8 * PEER_MESSAGE_BYTES_MAX;

/// Decodes a value, rejecting trailing bytes and claims beyond [`DECODE_CLAIM_BYTES_MAX`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let config = bincode::config::standard().with_limit::<DECODE_CLAIM_BYTES_MAX>();
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - read));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cp::command::{Command, Put, StoredValue};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn commands_round_trip(keyspace in "[a-z]{1,8}", key in prop::collection::vec(any::<u8>(), 1..64), value in prop::collection::vec(any::<u8>(), 0..256)) {
            let command = Command::Put(Put { keyspace, key, value });
            prop_assert_eq!(decode::<Command>(&encode(&command)).unwrap(), command);
        }

        #[test]
        fn stored_values_round_trip(value in prop::collection::vec(any::<u8>(), 0..256), a in any::<u64>(), b in any::<u64>(), c in any::<u64>()) {
            let stored = StoredValue { value, create_revision: a, mod_revision: b, version: c };
            prop_assert_eq!(decode::<StoredValue>(&encode(&stored)).unwrap(), stored);
        }
    }

    /// The same fields, one struct marked as byte strings and one not.
    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Plain {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    }

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Marked {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
    }

    proptest! {
        #[test]
        fn byte_strings_encode_as_plain_byte_vectors(key in prop::collection::vec(any::<u8>(), 0..300), value in prop::option::of(prop::collection::vec(any::<u8>(), 0..300))) {
            let plain = encode(&Plain { key: key.clone(), value: value.clone() });
            let marked = encode(&Marked { key: key.clone(), value: value.clone() });
            prop_assert_eq!(&plain, &marked);
            prop_assert_eq!(decode::<Marked>(&plain).unwrap(), Marked { key, value });
        }
    }

    #[test]
    fn a_message_of_the_peer_limit_decodes() {
        // The worst case for claims: every byte a one-byte varint that claims eight.
        let numbers = vec![1u64; PEER_MESSAGE_BYTES_MAX - 16];
        let bytes = encode(&numbers);
        assert!(bytes.len() <= PEER_MESSAGE_BYTES_MAX);
        assert_eq!(decode::<Vec<u64>>(&bytes).unwrap().len(), numbers.len());
        let text = "x".repeat(PEER_MESSAGE_BYTES_MAX - 16);
        assert_eq!(decode::<String>(&encode(&text)).unwrap().len(), text.len());
    }

    #[test]
    fn a_forged_length_is_refused_before_it_is_allocated() {
        let mut bytes = vec![253];
        bytes.extend((1u64 << 60).to_le_bytes());
        let err = decode::<String>(&bytes).unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&42u64);
        bytes.push(0);
        assert!(decode::<u64>(&bytes).is_err());
    }
}
