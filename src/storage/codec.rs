//! The on-disk and on-wire encoding of Rust values: bincode 2 over serde, standard config.
//!
//! Byte fields that can be large (keys and values) are marked `#[serde(with = "serde_bytes")]`:
//! serde otherwise hands a `Vec<u8>` to bincode one byte at a time, which costs tens of
//! milliseconds per MiB in a debug build and blocked the async workers while a leader encoded
//! megabytes of log entries. Both forms write the same bytes (a length, then the bytes), so
//! records written before the marking still decode.
//!
//! Caveat: there is no format version inside each record; a format change needs a migration.

use serde::de::DeserializeOwned;
use serde::Serialize;

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

/// Decodes a value, rejecting trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
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
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&42u64);
        bytes.push(0);
        assert!(decode::<u64>(&bytes).is_err());
    }
}
