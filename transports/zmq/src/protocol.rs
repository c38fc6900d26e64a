//! The parts of a Courier message over ZeroMQ (sans-IO). See `docs/PROTOCOL.md`, "zmq://".

use bytes::Bytes;
use courier_core::{CommError, ErrorKind, Message};

/// First part of a handshake: then the same hello bytes as on stream transports, then a u32
/// LE window: how many unconsumed messages this side's inbox holds (the peer's initial credit).
pub(crate) const HELLO: u8 = b'H';
/// A Courier message: then the header part, then one part per frame.
pub(crate) const MESSAGE: u8 = b'M';
/// Credits: then a part holding a u32 LE count of messages the receiver consumed.
pub(crate) const CREDIT: u8 = b'C';
/// Heartbeat: no further parts.
pub(crate) const HEARTBEAT: u8 = b'P';
/// Close: then a part with a UTF-8 reason (may be empty).
pub(crate) const CLOSE: u8 = b'X';

/// What a peer sent.
#[derive(Debug)]
pub(crate) enum Incoming {
    Hello(Bytes, u32),
    Message(Message),
    Credit(u32),
    Heartbeat,
    Close(String),
}

/// The one-byte kind part (the kinds above without an allocation).
pub(crate) fn kind(k: u8) -> Bytes {
    const KINDS: &[u8] = &[HELLO, MESSAGE, CREDIT, HEARTBEAT, CLOSE];
    match KINDS.iter().position(|&c| c == k) {
        Some(i) => Bytes::from_static(&KINDS[i..=i]),
        None => Bytes::copy_from_slice(&[k]),
    }
}

pub(crate) fn credit_parts(n: u32) -> Vec<Bytes> {
    vec![kind(CREDIT), Bytes::copy_from_slice(&n.to_le_bytes())]
}

pub(crate) fn close_parts(reason: &str) -> Vec<Bytes> {
    vec![kind(CLOSE), Bytes::copy_from_slice(reason.as_bytes())]
}

/// Parses the parts of one ZeroMQ message (the ZMTP decoder has already checked every part
/// against this side's receive limits as it arrived).
pub(crate) fn parse(mut parts: Vec<Bytes>) -> Result<Incoming, CommError> {
    let bad = |why: &str| CommError::protocol(format!("zmq:// peer sent {why}"));
    if parts.is_empty() || parts[0].len() != 1 {
        return Err(bad("a message without a one-byte kind part"));
    }
    let k = parts[0][0];
    match k {
        HELLO if parts.len() == 3 && parts[2].len() == 4 => {
            let window = u32::from_le_bytes(parts[2][..].try_into().expect("4 bytes"));
            if window == 0 {
                return Err(bad("a hello with a window of 0"));
            }
            Ok(Incoming::Hello(parts.swap_remove(1), window))
        }
        MESSAGE if parts.len() >= 2 => {
            // The frames keep the parts' allocation.
            let header = std::mem::take(&mut parts[1]);
            parts.drain(..2);
            Ok(Incoming::Message(Message { header, frames: parts, local: None }))
        }
        CREDIT if parts.len() == 2 && parts[1].len() == 4 => {
            Ok(Incoming::Credit(u32::from_le_bytes(parts[1][..].try_into().expect("4 bytes"))))
        }
        HEARTBEAT if parts.len() == 1 => Ok(Incoming::Heartbeat),
        CLOSE if parts.len() == 2 => Ok(Incoming::Close(String::from_utf8_lossy(&parts[1]).into_owned())),
        HELLO | MESSAGE | CREDIT | HEARTBEAT | CLOSE => {
            Err(bad(&format!("a {:?} message with {} parts", k as char, parts.len())))
        }
        other => {
            Err(CommError::new(ErrorKind::Protocol, format!("zmq:// peer sent unknown message kind {other:#04x}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_parts(msg: Message) -> Vec<Bytes> {
        let mut parts = vec![kind(MESSAGE), msg.header];
        parts.extend(msg.frames);
        parts
    }

    #[test]
    fn round_trips_and_rejections() {
        let m = Message::new(Bytes::from_static(b"h"), vec![Bytes::new(), Bytes::from_static(b"abc")]);
        match parse(message_parts(m.clone())).unwrap() {
            Incoming::Message(got) => assert_eq!(got, m),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(credit_parts(7)).unwrap(), Incoming::Credit(7)));
        assert!(matches!(parse(close_parts("bye")).unwrap(), Incoming::Close(r) if r == "bye"));
        assert!(matches!(parse(vec![kind(HEARTBEAT)]).unwrap(), Incoming::Heartbeat));
        for bad in [vec![], vec![Bytes::from_static(b"MM")], vec![kind(b'Z')], vec![kind(CREDIT), Bytes::new()]] {
            assert_eq!(parse(bad).unwrap_err().kind(), ErrorKind::Protocol);
        }
    }
}
