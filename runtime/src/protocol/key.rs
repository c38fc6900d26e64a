//! [`Key`]: a task's name, shared and hashed once.
//!
//! Every task key is looked up many times on its way through a cluster: the client's futures,
//! the scheduler's task table and its per-worker sets, the worker's tables. Hashing the text at
//! every lookup (and again for every entry each time a table grows) was the largest single
//! cost of the scheduler's per-task work. A `Key` hashes its text once, when it is made, and
//! carries the result beside its shared text; a table then hashes that one number with its
//! own random seed. So a key costs one string hash per process it enters (where it is decoded
//! or made), and a lookup or a table's regrowth reads no string at all.
//!
//! The stored hash is SipHash-1-3 under a fixed key: the same in every run, so the simulator's
//! tables iterate in the same order for the same seed. A peer that knows the function still
//! cannot make the tables degrade: two keys share a bucket in a table only if their full
//! 64-bit hashes are equal (each table mixes the number with its own random seed), and a
//! second key with a given 64-bit SipHash costs ~2^64 tries.
//!
//! Because its `Hash` differs from `str`'s, a `Key` does not implement `Borrow<str>`: tables
//! keyed by `Key` are looked up with a `Key` (`Key::from(text)` where only text is at hand).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A task's name, unique in the cluster. A key names one computation: submitting the same key
/// twice means the same function on the same arguments. Cheap to clone (shared text) and to
/// look up (hashed once, when made; see the [module docs](self)). On the wire it is a plain
/// string. Dereferences to `str`.
#[derive(Clone)]
pub struct Key {
    hash: u64,
    text: Arc<str>,
}

/// The hash a key carries: SipHash-1-3 with fixed keys (`DefaultHasher::new`), so it is the
/// same in every run of this build.
fn hash_text(text: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(text.as_bytes());
    h.finish()
}

impl Key {
    /// A key of this text.
    pub fn new(text: impl Into<Arc<str>>) -> Key {
        let text = text.into();
        Key { hash: hash_text(&text), text }
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The shared text.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.text
    }
}

impl std::ops::Deref for Key {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Eq for Key {}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        &*self.text == other
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        &*self.text == *other
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// By text, as strings order.
impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.text, f)
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Key {
        Key::new(text)
    }
}

impl From<&String> for Key {
    fn from(text: &String) -> Key {
        Key::new(text.as_str())
    }
}

impl From<String> for Key {
    fn from(text: String) -> Key {
        Key::new(text)
    }
}

impl From<Box<str>> for Key {
    fn from(text: Box<str>) -> Key {
        Key::new(text)
    }
}

impl From<Arc<str>> for Key {
    fn from(text: Arc<str>) -> Key {
        Key::new(text)
    }
}

impl From<&Key> for Key {
    fn from(key: &Key) -> Key {
        key.clone()
    }
}

impl From<Key> for Arc<str> {
    fn from(key: Key) -> Arc<str> {
        key.text
    }
}

impl From<Key> for String {
    fn from(key: Key) -> String {
        key.text.to_string()
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key (a string)")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key::from(v))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key, E> {
                Ok(Key::from(v))
            }

            /// UTF-8 sent as MessagePack bin (as some encoders do for text) is accepted, as
            /// `String` accepts it.
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Key, E> {
                std::str::from_utf8(v)
                    .map(Key::from)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Bytes(v), &self))
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn equal_texts_are_equal_keys_with_equal_hashes() {
        let a = Key::from("inc-7");
        let b = Key::from(String::from("inc-7"));
        assert!(!Arc::ptr_eq(a.as_arc(), b.as_arc()));
        assert_eq!(a, b);
        let s = RandomState::new();
        assert_eq!(s.hash_one(&a), s.hash_one(&b));
        assert_ne!(a, Key::from("inc-8"));
        assert_eq!(a, "inc-7");
        assert_eq!(&*a, "inc-7");
    }

    #[test]
    fn keys_order_as_their_text() {
        let mut keys: Vec<Key> = ["b", "a", "ab", ""].into_iter().map(Key::from).collect();
        keys.sort();
        let texts: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        assert_eq!(texts, ["", "a", "ab", "b"]);
    }

    proptest::proptest! {
        /// Keys agree with their texts: equal exactly when the texts are, equal keys hash
        /// alike, they order as the texts do, and a key decodes from MessagePack bytes (any
        /// bytes: a decoder) only as the string they hold.
        #[test]
        fn keys_behave_as_their_texts(a in ".{0,40}", b in ".{0,40}", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let (ka, kb) = (Key::from(a.as_str()), Key::from(b.clone()));
            proptest::prop_assert_eq!(ka == kb, a == b);
            proptest::prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            let s = RandomState::new();
            if a == b {
                proptest::prop_assert_eq!(s.hash_one(&ka), s.hash_one(&kb));
            }
            let back: Key = courier_core::Payload::new(&ka).unwrap().decode().unwrap();
            proptest::prop_assert_eq!(&back, &ka);
            let raw = courier_core::Payload { header: bytes::Bytes::from(bytes.clone()), frames: Vec::new() };
            let as_key = raw.decode::<Key>().ok();
            let as_text = raw.decode::<String>().ok();
            proptest::prop_assert_eq!(as_key.map(|k| k.to_string()), as_text);
        }
    }

    #[test]
    fn a_key_is_a_plain_string_in_messagepack() {
        use courier_core::Payload;
        let key = Key::from("x-1");
        let bytes = Payload::new(&key).unwrap();
        assert_eq!(bytes, Payload::new("x-1").unwrap());
        let back: Key = bytes.decode().unwrap();
        assert_eq!(back, key);
        assert!(Payload::new(&7u32).unwrap().decode::<Key>().is_err());
        // bin 8 of "abc", and of bytes that are not UTF-8.
        let bin =
            |b: &[u8]| Payload { header: bytes::Bytes::from([&[0xc4, b.len() as u8], b].concat()), frames: Vec::new() };
        assert_eq!(bin(b"abc").decode::<Key>().unwrap(), "abc");
        assert!(bin(&[0xff, 0xfe]).decode::<Key>().is_err());
    }
}
