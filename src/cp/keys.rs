//! Key layout of the state machine tree, chosen so a keyspace (or a prefix inside it) is one
//! contiguous range: data keys are `d/<keyspace>\0<key>`. Keyspace names never hold `\0`, so the
//! separator is unambiguous and keys of one keyspace sort together, in byte order.

pub const APPLIED: &[u8] = b"m/applied";
pub const MEMBERSHIP: &[u8] = b"m/membership";
/// The writes of the latest apply, stored before them (see `state_machine.rs`, DURABILITY).
pub const APPLYING: &[u8] = b"m/applying";
const KEYSPACE_PREFIX: &[u8] = b"k/";
const DATA_PREFIX: &[u8] = b"d/";

/// The session table of exactly-once writes ([`super::session`]): its count and clock, one
/// record per client (`c/<client>`, holding its small answers), a large kept answer under
/// `r/<client><sequence big-endian>`, and the idle order `i/<last_ms big-endian><client>`, so
/// the session idle longest is the first key. `s/<client>` is the record of a session written
/// by capkv before records held answers (every answer under `r/`), read until it is rewritten.
pub const SESSIONS_META: &[u8] = b"m/sessions";
const SESSION_PREFIX: &[u8] = b"c/";
const LEGACY_SESSION_PREFIX: &[u8] = b"s/";
const KEPT_PREFIX: &[u8] = b"r/";
pub const IDLE_PREFIX: &[u8] = b"i/";

pub fn session_record(client: &[u8]) -> Vec<u8> {
    [SESSION_PREFIX, client].concat()
}

pub fn legacy_session(client: &[u8]) -> Vec<u8> {
    [LEGACY_SESSION_PREFIX, client].concat()
}

pub fn kept(client: &[u8], sequence: u64) -> Vec<u8> {
    [KEPT_PREFIX, client, &sequence.to_be_bytes()].concat()
}

pub fn idle(last_ms: u64, client: &[u8]) -> Vec<u8> {
    [IDLE_PREFIX, &last_ms.to_be_bytes(), client].concat()
}

/// The (last_ms, client) of an idle-order key made by [`idle`].
pub fn parse_idle(key: &[u8]) -> Option<(u64, [u8; 16])> {
    let rest = key.strip_prefix(IDLE_PREFIX)?;
    let last_ms = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let client = rest.get(8..)?.try_into().ok()?;
    Some((last_ms, client))
}

/// The key of a keyspace definition.
pub fn keyspace(name: &str) -> Vec<u8> {
    [KEYSPACE_PREFIX, name.as_bytes()].concat()
}

/// The prefix under which all keyspace definitions live.
pub fn keyspaces_prefix() -> &'static [u8] {
    KEYSPACE_PREFIX
}

/// The prefix of every data key of `keyspace` that starts with `prefix`.
pub fn data_prefix(keyspace: &str, prefix: &[u8]) -> Vec<u8> {
    [DATA_PREFIX, keyspace.as_bytes(), b"\0", prefix].concat()
}

/// The storage key of `key` in `keyspace`.
pub fn data(keyspace: &str, key: &[u8]) -> Vec<u8> {
    data_prefix(keyspace, key)
}

/// The user key inside a data key of `keyspace`.
pub fn user_key<'a>(keyspace: &str, data_key: &'a [u8]) -> &'a [u8] {
    &data_key[DATA_PREFIX.len() + keyspace.len() + 1..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_idle_order_is_time_order_and_parses_back() {
        let (early, late) = (idle(5, &[9; 16]), idle(256, &[1; 16]));
        assert!(early < late);
        assert_eq!(parse_idle(&late), Some((256, [1; 16])));
        assert_eq!(parse_idle(b"i/short"), None);
    }

    #[test]
    fn keyspaces_do_not_overlap() {
        // "bank" and "bank2" must not share a prefix range.
        let bank = data_prefix("bank", b"");
        assert!(!data("bank2", b"x").starts_with(&bank));
        assert!(data("bank", b"x").starts_with(&bank));
    }

    proptest! {
        #[test]
        fn user_keys_round_trip(ks in "[a-z][a-z0-9_-]{0,10}", key in prop::collection::vec(any::<u8>(), 1..32)) {
            let stored = data(&ks, &key);
            prop_assert_eq!(user_key(&ks, &stored), key.as_slice());
        }

        #[test]
        fn prefix_order_is_key_order(ks in "[a-z]{1,5}", a in prop::collection::vec(any::<u8>(), 1..8), b in prop::collection::vec(any::<u8>(), 1..8)) {
            prop_assert_eq!(data(&ks, &a).cmp(&data(&ks, &b)), a.cmp(&b));
        }
    }
}
