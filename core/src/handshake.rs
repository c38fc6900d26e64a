//! The handshake every new comm starts with (sans-IO).
//!
//! Right after connecting, both sides send a [`Hello`] at once, without waiting for the other,
//! then read the peer's. A hello carries the wire version, the receive [`Limits`], the
//! compression codecs the side accepts, and a name. [`negotiate`] combines the two into the
//! [`Session`] a comm runs with. The byte layout is in `docs/PROTOCOL.md` ("Handshake").

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::compression::{ALL_CODECS, Compression};
use crate::error::CommError;
use crate::limits::Limits;

/// The four bytes that open every stream comm: `CRWR`.
pub const MAGIC: [u8; 4] = *b"CRWR";
/// The wire version this build speaks.
pub const WIRE_VERSION: u16 = 1;
/// Fixed prefix: magic, version, body length.
pub const PREFIX_LEN: usize = 8;
/// Largest hello body accepted.
pub const MAX_BODY_LEN: usize = 4096;
/// Longest name carried in a hello.
pub const MAX_NAME_LEN: usize = 1024;
const FIXED_BODY_LEN: usize = 34;

/// In [`Hello::flags`]: this listener checks credentials, and sends a verdict
/// ([`VERDICT_OK`], or closes) after reading the peer's hello.
pub const FLAG_REQUIRES_CREDENTIAL: u32 = 1;
/// The four bytes a listener that checks credentials sends when it accepts the peer's.
pub const VERDICT_OK: [u8; 4] = *b"CRok";

/// What one side announces.
#[derive(Clone, PartialEq, Eq)]
pub struct Hello {
    /// Wire version.
    pub version: u16,
    /// What this side accepts.
    pub limits: Limits,
    /// Codecs this side can decompress, as a bit mask (bit 0: snappy, bit 1: lz4).
    pub compressions: u32,
    /// A free-form identity (worker name, client id); may be empty.
    pub name: String,
    /// A shared secret presented to a listener that checks credentials (empty: none).
    pub credential: Vec<u8>,
    /// Bit flags ([`FLAG_REQUIRES_CREDENTIAL`]).
    pub flags: u32,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("version", &self.version)
            .field("limits", &self.limits)
            .field("compressions", &self.compressions)
            .field("name", &self.name)
            .field("credential", &if self.credential.is_empty() { "none" } else { "<redacted>" })
            .field("flags", &self.flags)
            .finish()
    }
}

impl Hello {
    /// A hello for this build's version.
    pub fn new(limits: Limits, compression: Compression, name: impl Into<String>) -> Self {
        let mut name: String = name.into();
        if name.len() > MAX_NAME_LEN {
            let mut cut = MAX_NAME_LEN;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            name.truncate(cut);
        }
        Hello {
            version: WIRE_VERSION,
            limits,
            compressions: compression.offered_mask(),
            name,
            credential: Vec::new(),
            flags: 0,
        }
    }

    /// This hello presenting `credential`.
    pub fn with_credential(mut self, credential: Option<&crate::auth::Credential>) -> Self {
        self.credential = credential.map(|c| c.expose().to_vec()).unwrap_or_default();
        self
    }

    /// This hello with `flags`.
    pub fn with_flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }

    /// The hello's bytes.
    pub fn encode(&self) -> Bytes {
        let body_len = FIXED_BODY_LEN + self.name.len() + 2 + self.credential.len() + 4;
        let mut b = BytesMut::with_capacity(PREFIX_LEN + body_len);
        b.put_slice(&MAGIC);
        b.put_u16_le(self.version);
        b.put_u16_le(body_len as u16);
        b.put_u64_le(self.limits.max_frame_size);
        b.put_u32_le(self.limits.max_frames);
        b.put_u32_le(self.compressions);
        b.put_u64_le(self.limits.max_header_size);
        b.put_u64_le(self.limits.max_message_size);
        b.put_u16_le(self.name.len() as u16);
        b.put_slice(self.name.as_bytes());
        b.put_u16_le(self.credential.len() as u16);
        b.put_slice(&self.credential);
        b.put_u32_le(self.flags);
        b.freeze()
    }

    /// Decodes a hello from the front of `src`, consuming it. `None` until enough bytes are
    /// there. Fails on a wrong magic (as soon as 4 bytes show it), another wire version (the
    /// message names both), or a malformed body.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Hello>, CommError> {
        let magic_seen = src.len().min(MAGIC.len());
        // A TLS record (handshake 0x16 or alert 0x15, version 3.x) means a tls:// peer.
        if src.len() >= 2 && matches!(src[0], 0x15 | 0x16) && src[1] == 0x03 {
            return Err(CommError::protocol(
                "the peer speaks TLS, not the plain Courier protocol: connect with tls://",
            ));
        }
        if src[..magic_seen] != MAGIC[..magic_seen] {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ");
            return Err(CommError::protocol(format!(
                "bad magic bytes {} (hex): the peer does not speak the Courier wire protocol (expected {} = \"CRWR\")",
                hex(&src[..magic_seen]),
                hex(&MAGIC)
            )));
        }
        if src.len() < PREFIX_LEN {
            return Ok(None);
        }
        let version = u16::from_le_bytes([src[4], src[5]]);
        if version != WIRE_VERSION {
            return Err(CommError::protocol(format!(
                "wire version mismatch: peer speaks version {version}, this side speaks version {WIRE_VERSION}"
            )));
        }
        let body_len = u16::from_le_bytes([src[6], src[7]]) as usize;
        if !(FIXED_BODY_LEN..=MAX_BODY_LEN).contains(&body_len) {
            return Err(CommError::protocol(format!(
                "hello body of {body_len} bytes (must be {FIXED_BODY_LEN}..={MAX_BODY_LEN})"
            )));
        }
        if src.len() < PREFIX_LEN + body_len {
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        let mut body = src.split_to(body_len);
        let limits = Limits {
            max_frame_size: body.get_u64_le(),
            max_frames: body.get_u32_le(),
            max_header_size: 0,
            max_message_size: 0,
        };
        let compressions = body.get_u32_le();
        let limits = Limits { max_header_size: body.get_u64_le(), max_message_size: body.get_u64_le(), ..limits };
        let name_len = body.get_u16_le() as usize;
        if name_len > MAX_NAME_LEN {
            return Err(CommError::protocol(format!("hello name of {name_len} bytes exceeds {MAX_NAME_LEN} bytes")));
        }
        if name_len > body.len() {
            return Err(CommError::protocol(format!("hello name of {name_len} bytes overruns the body")));
        }
        let name = String::from_utf8(body[..name_len].to_vec())
            .map_err(|e| CommError::protocol("hello name is not UTF-8").with_source(e))?;
        body.advance(name_len);
        // Fields added after the name: absent in older hellos (then: no credential, no flags).
        let mut credential = Vec::new();
        if body.len() >= 2 {
            let len = body.get_u16_le() as usize;
            if len > crate::auth::MAX_CREDENTIAL_LEN || len > body.len() {
                return Err(CommError::protocol(format!("hello credential of {len} bytes is malformed")));
            }
            credential = body.split_to(len).to_vec();
        }
        let flags = if body.len() >= 4 { body.get_u32_le() } else { 0 };
        // Bytes after these are fields of later minor versions: ignored.
        Ok(Some(Hello { version, limits, compressions, name, credential, flags }))
    }
}

/// What a comm runs with after the handshake.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// How this side compresses what it sends (`None` if the peer accepts no codec).
    pub send_compression: Compression,
    /// The codecs this side may send with: those the peer announced that this build knows.
    pub send_codecs: u32,
    /// The peer's receive limits: this side refuses to send beyond them.
    pub send_limits: Limits,
    /// This side's receive limits.
    pub recv_limits: Limits,
    /// The peer's hello.
    pub peer: Hello,
}

/// Combines this side's settings with the peer's hello.
pub fn negotiate(local_limits: Limits, local_compression: Compression, peer: Hello) -> Session {
    let send_codecs = peer.compressions & ALL_CODECS;
    let send_compression = if send_codecs != 0 { local_compression } else { Compression::None };
    Session { send_compression, send_codecs, send_limits: peer.limits, recv_limits: local_limits, peer }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn round_trip_from_every_split() {
        let h = Hello::new(Limits::default(), Compression::AUTO, "worker-1 ✓");
        let bytes = h.encode();
        for cut in 0..bytes.len() {
            let mut src = BytesMut::from(&bytes[..cut]);
            assert_eq!(Hello::decode(&mut src).unwrap(), None, "cut {cut}");
            src.extend_from_slice(&bytes[cut..]);
            src.extend_from_slice(b"next");
            assert_eq!(Hello::decode(&mut src).unwrap().as_ref(), Some(&h));
            assert_eq!(&src[..], b"next", "only the hello is consumed");
        }
    }

    #[test]
    fn bad_magic_is_seen_early() {
        let mut src = BytesMut::from(&b"GE"[..]);
        let e = Hello::decode(&mut src).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.to_string().contains("magic"), "{e}");
    }

    #[test]
    fn magic_is_printed_in_hex_and_names_are_bounded() {
        let e = Hello::decode(&mut BytesMut::from(&b"\x10\x20"[..])).unwrap_err().to_string();
        assert!(e.contains("bad magic bytes 10 20 (hex)") && e.contains("43 52 57 52"), "{e}");
        // A hello whose body ends with a name one byte over the limit.
        let mut long =
            Hello::new(Limits::default(), Compression::None, "").encode()[..PREFIX_LEN + FIXED_BODY_LEN].to_vec();
        let name = vec![b'a'; MAX_NAME_LEN + 1];
        let body_len = (FIXED_BODY_LEN + name.len()) as u16;
        long[6..8].copy_from_slice(&body_len.to_le_bytes());
        let n = long.len();
        long[n - 2..].copy_from_slice(&(name.len() as u16).to_le_bytes());
        long.extend_from_slice(&name);
        let e = Hello::decode(&mut BytesMut::from(&long[..])).unwrap_err().to_string();
        assert!(e.contains("exceeds 1024 bytes"), "{e}");
    }

    #[test]
    fn a_tls_peer_is_recognised() {
        for record in [&[0x16u8, 0x03, 0x01, 0x02][..], &[0x15, 0x03, 0x03, 0x00, 0x02]] {
            let e = Hello::decode(&mut BytesMut::from(record)).unwrap_err();
            assert!(e.to_string().contains("tls://"), "{e}");
        }
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        let mut bytes = BytesMut::from(&Hello::new(Limits::default(), Compression::None, "").encode()[..]);
        bytes[4] = 7;
        let e = Hello::decode(&mut bytes).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.to_string().contains("version 7") && e.to_string().contains("version 1"), "{e}");
    }

    #[test]
    fn malformed_bodies_are_protocol_errors() {
        let good = Hello::new(Limits::default(), Compression::None, "abc").encode();
        let mut short = BytesMut::from(&good[..]);
        short[6] = 3;
        short[7] = 0;
        assert_eq!(Hello::decode(&mut short).unwrap_err().kind(), ErrorKind::Protocol);
        let mut overrun = BytesMut::from(&good[..]);
        let n = PREFIX_LEN + FIXED_BODY_LEN - 2;
        overrun[n] = 200;
        assert_eq!(Hello::decode(&mut overrun).unwrap_err().kind(), ErrorKind::Protocol);
        let mut not_utf8 = BytesMut::from(&good[..]);
        not_utf8[PREFIX_LEN + FIXED_BODY_LEN] = 0xff;
        assert_eq!(Hello::decode(&mut not_utf8).unwrap_err().kind(), ErrorKind::Protocol);
    }

    #[test]
    fn credentials_and_flags_round_trip_and_older_hellos_have_none() {
        let c = crate::auth::Credential::new("s3cret").unwrap();
        let h = Hello::new(Limits::default(), Compression::None, "w")
            .with_credential(Some(&c))
            .with_flags(FLAG_REQUIRES_CREDENTIAL);
        let back = Hello::decode(&mut BytesMut::from(&h.encode()[..])).unwrap().unwrap();
        assert_eq!(back.credential, b"s3cret");
        assert_eq!(back.flags, FLAG_REQUIRES_CREDENTIAL);
        assert!(!format!("{back:?}").contains("s3cret"), "never printed");
        // A version-1 hello from before these fields: the body ends after the name.
        let old = &h.encode()[..PREFIX_LEN + FIXED_BODY_LEN + 1];
        let mut old = old.to_vec();
        old[6..8].copy_from_slice(&((FIXED_BODY_LEN + 1) as u16).to_le_bytes());
        let back = Hello::decode(&mut BytesMut::from(&old[..])).unwrap().unwrap();
        assert!(back.credential.is_empty() && back.flags == 0);
    }

    #[test]
    fn compression_needs_both_sides() {
        let none = Hello::new(Limits::default(), Compression::None, "");
        let auto = Hello::new(Limits::default(), Compression::AUTO, "");
        assert_eq!(negotiate(Limits::default(), Compression::AUTO, none).send_compression, Compression::None);
        assert_eq!(negotiate(Limits::default(), Compression::AUTO, auto.clone()).send_compression, Compression::AUTO);
        assert_eq!(negotiate(Limits::default(), Compression::None, auto).send_compression, Compression::None);
    }

    #[test]
    fn codecs_are_those_the_peer_announced_and_this_build_knows() {
        let mut peer = Hello::new(Limits::default(), Compression::AUTO, "");
        assert_eq!(negotiate(Limits::default(), Compression::AUTO, peer.clone()).send_codecs, 0b11);
        // An older peer that knows only snappy; a newer one announcing codecs unknown here.
        peer.compressions = 0b1;
        assert_eq!(negotiate(Limits::default(), Compression::AUTO, peer.clone()).send_codecs, 0b1);
        peer.compressions = 0b1110;
        let s = negotiate(Limits::default(), Compression::AUTO, peer);
        assert_eq!((s.send_codecs, s.send_compression), (0b10, Compression::AUTO));
    }
}
