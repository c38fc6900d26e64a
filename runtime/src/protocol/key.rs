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

use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::collections::Map;

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

/// Texts a thread keeps for [`Key::deserialize_interned`] and [`deserialize_holders`], at
/// most: a peer that sends endless distinct names gets fresh allocations beyond these, never
/// a growing table.
const MAX_INTERNED: usize = 1024;
/// Longest text interned (the bound on function names and addresses alike: longer ones are
/// refused by the bounds checks after decoding, and must not stay behind in the table).
const MAX_INTERNED_LEN: usize = super::bounds::MAX_ADDRESS_LEN;

thread_local! {
    static KEYS: RefCell<Map<Box<str>, Key>> = RefCell::new(Map::default());
    static TEXTS: RefCell<Map<Box<str>, Arc<str>>> = RefCell::new(Map::default());
    /// The last few holder lists decoded on this thread (a cluster has few workers, and a
    /// result usually lives on one).
    static HOLDER_LISTS: RefCell<Vec<Arc<[Arc<str>]>>> = const { RefCell::new(Vec::new()) };
}

/// How many holder lists [`deserialize_holders`] remembers per thread.
const REMEMBERED_LISTS: usize = 8;

fn intern_in<V: Clone>(table: &RefCell<Map<Box<str>, V>>, text: &str, make: impl FnOnce(&str) -> V) -> V {
    let mut table = table.borrow_mut();
    if let Some(v) = table.get(text) {
        return v.clone();
    }
    let v = make(text);
    if text.len() <= MAX_INTERNED_LEN && table.len() < MAX_INTERNED {
        table.insert(text.into(), v.clone());
    }
    v
}

/// Visits a string (or UTF-8 bin, as [`Key`] accepts) and hands it to `f`.
struct TextVisitor<F>(F, &'static str);

impl<T, F: FnOnce(&str) -> T> serde::de::Visitor<'_> for TextVisitor<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        Ok((self.0)(v))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<T, E> {
        match std::str::from_utf8(v) {
            Ok(text) => Ok((self.0)(text)),
            Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(v), &self)),
        }
    }
}

impl Key {
    /// Deserializes a key whose text repeats from message to message (a function name): a
    /// text this thread decoded before comes back as the same shared key, with no allocation
    /// and no string hash (a table lookup instead). Decodes exactly what [`Key`]'s own
    /// `Deserialize` does; at most [`MAX_INTERNED`] texts of at most [`MAX_INTERNED_LEN`]
    /// bytes are kept per thread.
    pub fn deserialize_interned<'de, D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        d.deserialize_str(TextVisitor(
            |text: &str| KEYS.with(|t| intern_in(t, text, |s: &str| Key::from(s))),
            "a key (a string)",
        ))
    }
}

/// Deserializes a list of worker addresses (a result's holders, sent to a client with every
/// finished task): the usual lists, of the few workers of a cluster, come back as one shared
/// list with no allocation. Decodes exactly what `Arc<[Arc<str>]>`'s `Deserialize` does.
pub fn deserialize_holders<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[Arc<str>]>, D::Error> {
    struct Holders;
    impl<'de> serde::de::Visitor<'de> for Holders {
        type Value = Arc<[Arc<str>]>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence of addresses")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut list: smallvec::SmallVec<[Arc<str>; 4]> = smallvec::SmallVec::new();
            while let Some(text) = seq.next_element::<InternedText>()? {
                list.push(text.0);
            }
            Ok(HOLDER_LISTS.with(|lists| {
                let mut lists = lists.borrow_mut();
                let same = |known: &Arc<[Arc<str>]>| {
                    known.len() == list.len() && known.iter().zip(&list).all(|(a, b)| Arc::ptr_eq(a, b))
                };
                if let Some(known) = lists.iter().find(|known| same(known)) {
                    return known.clone();
                }
                let made: Arc<[Arc<str>]> = list.into_iter().collect();
                if lists.len() == REMEMBERED_LISTS {
                    lists.remove(0);
                }
                lists.push(made.clone());
                made
            }))
        }
    }
    d.deserialize_seq(Holders)
}

/// A string shared through this thread's table of texts.
struct InternedText(Arc<str>);

impl<'de> Deserialize<'de> for InternedText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor(
            |text: &str| InternedText(TEXTS.with(|t| intern_in(t, text, |s: &str| Arc::from(s)))),
            "a string",
        ))
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

    #[derive(Deserialize)]
    struct Func(#[serde(deserialize_with = "Key::deserialize_interned")] Key);

    #[derive(Deserialize)]
    struct Holders(#[serde(deserialize_with = "deserialize_holders")] Arc<[Arc<str>]>);

    fn payload(header: Vec<u8>) -> courier_core::Payload {
        courier_core::Payload { header: bytes::Bytes::from(header), frames: Vec::new() }
    }

    #[test]
    fn interned_keys_share_their_text_and_the_table_is_bounded() {
        let decode = |text: &str| courier_core::Payload::new(text).unwrap().decode::<Func>().unwrap().0;
        let (a, b) = (decode("inc-interned"), decode("inc-interned"));
        assert!(Arc::ptr_eq(a.as_arc(), b.as_arc()), "the second decoding shares the first's text");
        assert_eq!(a, Key::from("inc-interned"));
        assert_ne!(decode("other-interned"), a);
        // Too long to keep: decoded fresh every time.
        let long = "x".repeat(MAX_INTERNED_LEN + 1);
        assert!(!Arc::ptr_eq(decode(&long).as_arc(), decode(&long).as_arc()));
        // Endless distinct names fill the table to its bound and no further.
        for i in 0..MAX_INTERNED + 100 {
            assert_eq!(decode(&format!("name-{i}")), format!("name-{i}").as_str());
        }
        assert!(KEYS.with(|t| t.borrow().len()) <= MAX_INTERNED);
        assert_eq!(decode("inc-interned"), a);
    }

    #[test]
    fn holder_lists_are_shared() {
        let decode = |list: &[&str]| courier_core::Payload::new(list).unwrap().decode::<Holders>().unwrap().0;
        let (a, b) = (decode(&["tcp://h:1", "tcp://h:2"]), decode(&["tcp://h:1", "tcp://h:2"]));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, &[Arc::from("tcp://h:1"), Arc::from("tcp://h:2")]);
        let c = decode(&["tcp://h:2"]);
        assert!(Arc::ptr_eq(&c[0], &a[1]), "the same address shares one text");
        assert!(decode(&[]).is_empty());
        for i in 0..2 * REMEMBERED_LISTS {
            assert_eq!(&*decode(&[&format!("tcp://h:{i}")]), &[Arc::from(format!("tcp://h:{i}").as_str())]);
        }
        assert!(HOLDER_LISTS.with(|l| l.borrow().len()) <= REMEMBERED_LISTS);
    }

    proptest::proptest! {
        /// The interning decoders decode exactly what the plain ones do, from any bytes.
        #[test]
        fn interning_decoders_agree_with_the_plain_ones(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            list in proptest::collection::vec(".{0,12}", 0..6),
        ) {
            let raw = payload(bytes);
            proptest::prop_assert_eq!(raw.decode::<Func>().ok().map(|f| f.0), raw.decode::<Key>().ok());
            let plain = raw.decode::<Arc<[Arc<str>]>>().ok();
            proptest::prop_assert_eq!(raw.decode::<Holders>().ok().map(|h| h.0), plain);
            let encoded = courier_core::Payload::new(&list).unwrap();
            let decoded = encoded.decode::<Holders>().unwrap().0;
            proptest::prop_assert_eq!(decoded.iter().map(|s| s.to_string()).collect::<Vec<_>>(), list);
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
