//! ZMTP 3.x framing with NULL security (RFC 23 and 37 at rfc.zeromq.org), sans-IO.
//!
//! Courier speaks just enough ZMTP to be a DEALER or ROUTER peer of libzmq: the 64-byte
//! greeting, the `READY` command with `Socket-Type` and `Identity`, `PING`/`PONG`, `ERROR`,
//! and multipart messages. The [`Decoder`] bounds every byte a peer can make it hold *before*
//! the bytes arrive: parts are checked against the phase's limits as soon as their length is
//! read, buffers grow with the bytes that actually arrive (at most
//! [`SPECULATIVE_MAX`](courier_core::budget::SPECULATIVE_MAX) ahead), and every byte held is
//! reserved from a [`RecvBudget`] first.

use std::sync::Mutex;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use courier_core::aligned::AlignedBuf;
use courier_core::budget::SPECULATIVE_MAX;
use courier_core::codec::{COALESCE_MAX, DIRECT_READ_MIN};
use courier_core::{CommError, ErrorKind, Limits, RecvBudget};

/// Length of a ZMTP 3 greeting.
pub const GREETING_LEN: usize = 64;
/// Largest command body, and largest part of any message that is not a Courier `M` message
/// (including every part before the Courier handshake completes).
pub const CONTROL_MAX: u64 = 8 * 1024;
/// Most parts of a message that is not a Courier `M` message.
pub const CONTROL_PARTS: usize = 3;
/// Bytes charged to the budget for each part's bookkeeping, so a message of many empty parts
/// is bounded too.
const PART_OVERHEAD: u64 = 64;
/// The first byte of a Courier `M` (message) part list.
const KIND_MESSAGE: u8 = b'M';

const FLAG_MORE: u8 = 0b001;
const FLAG_LONG: u8 = 0b010;
const FLAG_COMMAND: u8 = 0b100;

/// This side's greeting: ZMTP 3.1, mechanism NULL, as-server 0.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 1;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// Checks as much of a peer's greeting as has arrived (so garbage is refused at its first
/// byte); `Ok(true)` once all 64 bytes are there and valid.
pub fn check_greeting(g: &[u8]) -> Result<bool, CommError> {
    let bad = |why: String| CommError::protocol(format!("not a ZMTP 3 peer: {why}"));
    if let Some(&b) = g.first()
        && b != 0xff
    {
        return Err(bad(format!("greeting starts with {b:#04x}, not 0xff")));
    }
    if let Some(&b) = g.get(9)
        && b & 1 != 1
    {
        // ZMTP 1.0 peers put a length here with the low bit clear; 3.x sends 0x7f.
        return Err(bad(format!("greeting signature ends with {b:#04x}, not 0x7f (ZMTP 1.0 is not supported)")));
    }
    if let Some(&major) = g.get(10)
        && major < 3
    {
        return Err(bad(format!("ZMTP version {major} (3 or later required)")));
    }
    if g.len() < GREETING_LEN {
        return Ok(false);
    }
    let mechanism = &g[12..32];
    let end = mechanism.iter().position(|&b| b == 0).unwrap_or(mechanism.len());
    if &mechanism[..end] != b"NULL" || mechanism[end..].iter().any(|&b| b != 0) {
        let shown = String::from_utf8_lossy(&mechanism[..end]).into_owned();
        return Err(CommError::protocol(format!(
            "ZMTP security mechanism {shown:?} is not supported (zmq:// uses NULL; use tls:// for encryption)"
        )));
    }
    Ok(true)
}

/// A ZMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `READY` with its metadata properties (name, value).
    Ready(Vec<(String, Bytes)>),
    /// `PING` (ZMTP 3.1): answer with `PONG` carrying `context`.
    Ping {
        /// Up to 16 bytes the `PONG` must echo.
        context: Bytes,
    },
    /// `PONG` (ZMTP 3.1).
    Pong,
    /// `ERROR` with the peer's reason.
    Error(String),
    /// A command this side does not know (ignored).
    Other(String),
}

impl Command {
    /// The `Socket-Type` property of a `READY`, if any.
    pub fn property(props: &[(String, Bytes)], name: &str) -> Option<Bytes> {
        props.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }

    /// Parses a command frame's body.
    pub fn parse(mut body: Bytes) -> Result<Command, CommError> {
        let bad = |why: &str| CommError::protocol(format!("malformed ZMTP command: {why}"));
        if body.is_empty() {
            return Err(bad("empty"));
        }
        let n = body.get_u8() as usize;
        if n == 0 || n > body.len() {
            return Err(bad("name length"));
        }
        let name = body.split_to(n);
        match &name[..] {
            b"READY" => {
                let mut props = Vec::new();
                while body.has_remaining() {
                    let n = body.get_u8() as usize;
                    if n == 0 || n > body.len() {
                        return Err(bad("READY property name length"));
                    }
                    let name = String::from_utf8(body.split_to(n).to_vec())
                        .map_err(|_| bad("READY property name is not ASCII"))?;
                    if body.len() < 4 {
                        return Err(bad("READY property value length"));
                    }
                    let len = body.get_u32() as usize;
                    if len > body.len() {
                        return Err(bad("READY property value overruns the command"));
                    }
                    props.push((name, body.split_to(len)));
                }
                Ok(Command::Ready(props))
            }
            b"PING" => {
                if body.len() < 2 || body.len() > 2 + 16 {
                    return Err(bad("PING length"));
                }
                body.advance(2); // time-to-live: Courier's own heartbeats govern liveness
                Ok(Command::Ping { context: body })
            }
            b"PONG" => Ok(Command::Pong),
            b"ERROR" => {
                let reason = match body.first() {
                    Some(&n) if (n as usize) < body.len() => {
                        String::from_utf8_lossy(&body[1..=n as usize]).into_owned()
                    }
                    _ => String::new(),
                };
                Ok(Command::Error(reason))
            }
            other => Ok(Command::Other(String::from_utf8_lossy(other).into_owned())),
        }
    }
}

/// A command frame, ready to write.
pub fn command_frame(name: &str, data: &[u8]) -> Bytes {
    let body_len = 1 + name.len() + data.len();
    let mut b = BytesMut::with_capacity(body_len + 9);
    if body_len > 255 {
        b.put_u8(FLAG_COMMAND | FLAG_LONG);
        b.put_u64(body_len as u64);
    } else {
        b.put_u8(FLAG_COMMAND);
        b.put_u8(body_len as u8);
    }
    b.put_u8(name.len() as u8);
    b.put_slice(name.as_bytes());
    b.put_slice(data);
    b.freeze()
}

/// A `READY` command announcing `socket_type` and optionally a routing identity.
pub fn ready(socket_type: &str, identity: Option<&[u8]>) -> Bytes {
    let mut data = BytesMut::new();
    let mut prop = |name: &str, value: &[u8]| {
        data.put_u8(name.len() as u8);
        data.put_slice(name.as_bytes());
        data.put_u32(value.len() as u32);
        data.put_slice(value);
    };
    prop("Socket-Type", socket_type.as_bytes());
    if let Some(id) = identity {
        prop("Identity", id);
    }
    command_frame("READY", &data)
}

/// The `PONG` answering a `PING` with `context`.
pub fn pong(context: &[u8]) -> Bytes {
    command_frame("PONG", context)
}

/// Appends the frames of one multipart message to `out`: small parts are coalesced with
/// the frame headers into one chunk, large parts are referenced, never copied.
pub fn encode_message(parts: &[Bytes], out: &mut Vec<Bytes>) {
    encode_parts(parts.iter(), parts.len(), out);
}

/// [`encode_message`] for the `count` parts of an iterator (walked twice: once to size the
/// chunk that coalesces the small parts, once to fill it), so a caller need not collect them.
pub fn encode_parts<'a, I>(parts: I, count: usize, out: &mut Vec<Bytes>)
where
    I: Iterator<Item = &'a Bytes> + Clone,
{
    let coalesced = |p: &Bytes| if p.len() < COALESCE_MAX { p.len() } else { 0 };
    let mut pending = BytesMut::with_capacity(parts.clone().map(|p| 9 + coalesced(p)).sum());
    let last = count.saturating_sub(1);
    for (i, part) in parts.enumerate() {
        let more = if i < last { FLAG_MORE } else { 0 };
        if part.len() > 255 {
            pending.put_u8(more | FLAG_LONG);
            pending.put_u64(part.len() as u64);
        } else {
            pending.put_u8(more);
            pending.put_u8(part.len() as u8);
        }
        if part.len() < COALESCE_MAX {
            pending.extend_from_slice(part);
        } else {
            out.push(pending.split().freeze());
            out.push(part.clone());
        }
    }
    if !pending.is_empty() {
        out.push(pending.freeze());
    }
}

/// What the limits are while receiving.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Before the peer's greeting and `READY`, and before the Courier hello: every part and
    /// command is small.
    Handshake,
    /// After the Courier handshake: `M` messages within this side's receive limits.
    Session(Limits),
}

/// A decoded unit.
#[derive(Debug)]
pub enum Event {
    /// The peer's (valid) greeting.
    Greeting,
    /// A command.
    Command(Command),
    /// A complete multipart message, and the budget bytes it still holds (for `M` messages:
    /// released when the application takes the message; for others: already released).
    Message(Vec<Bytes>, u64),
}

/// Progress of [`Decoder::decode`].
#[derive(Debug)]
pub enum Step {
    /// Something complete.
    Event(Event),
    /// More bytes are needed.
    NeedBytes,
    /// The budget is exhausted by messages the application has not taken yet: decode again
    /// once it takes one.
    NeedBudget,
}

/// A receive budget shared by a comm's reader and its application-facing half.
#[derive(Debug)]
pub struct Budget {
    /// The comm's budget (and its listener's pool).
    pub inner: RecvBudget,
    /// Bytes held by complete messages not yet taken by the application.
    pub queued: u64,
}

impl Budget {
    /// A shared budget drawing on `inner`.
    pub fn new(inner: RecvBudget) -> Mutex<Budget> {
        Mutex::new(Budget { inner, queued: 0 })
    }
}

#[derive(Debug)]
enum State {
    Greeting,
    Flags,
    Size { flags: u8 },
    Body { flags: u8, len: usize, buf: Option<AlignedBuf> },
    Failed,
}

/// Decodes ZMTP from a byte stream split anywhere. See the module docs.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    phase: Phase,
    /// Parts of the message being received.
    parts: Vec<Bytes>,
    /// Bytes of the parts after the kind part so far (for the message-size limit).
    msg_len: u64,
    /// Budget bytes held for the message being received.
    reserved: u64,
    speculative: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Decoder {
    /// A comm closed in the middle of a message: free its parts, then tell the allocator.
    fn drop(&mut self) {
        self.state = State::Failed;
        self.parts = Vec::new();
        courier_core::aligned::abandoned(self.reserved);
    }
}

fn lock(b: &Mutex<Budget>) -> std::sync::MutexGuard<'_, Budget> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

impl Decoder {
    /// A decoder expecting the peer's greeting, with handshake limits.
    pub fn new() -> Self {
        Decoder {
            state: State::Greeting,
            phase: Phase::Handshake,
            parts: Vec::new(),
            msg_len: 0,
            reserved: 0,
            speculative: SPECULATIVE_MAX,
        }
    }

    /// Sets how far ahead of a part's bytes its buffer may be allocated (tests use small
    /// values to exercise growth).
    #[cfg(test)]
    pub fn with_speculative_max(mut self, bytes: usize) -> Self {
        self.speculative = bytes.max(1);
        self
    }

    /// From now on accept Courier messages within `limits` (after the Courier handshake).
    pub fn enter_session(&mut self, limits: Limits) {
        self.phase = Phase::Session(limits);
    }

    /// True between messages.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Flags | State::Greeting) && self.parts.is_empty()
    }

    /// The buffer of the part being received, when enough of it is missing that the I/O
    /// layer should read into it directly (after `src` was drained).
    pub fn read_target(&mut self) -> Option<&mut AlignedBuf> {
        match &mut self.state {
            State::Body { buf: Some(b), .. } if b.remaining() >= DIRECT_READ_MIN => Some(b),
            _ => None,
        }
    }

    /// Consumes what it can from `src`. After an error the decoder stays failed and holds
    /// nothing of `budget`.
    pub fn decode(&mut self, src: &mut BytesMut, budget: &Mutex<Budget>) -> Result<Step, CommError> {
        let result = self.step(src, budget);
        if result.is_err() {
            self.state = State::Failed;
            self.parts = Vec::new();
            lock(budget).inner.release(self.reserved);
            courier_core::aligned::abandoned(std::mem::take(&mut self.reserved));
        }
        result
    }

    /// Reserves `n` bytes for the message being received: `Ok(false)` when the budget is
    /// full only because of messages the application has not taken.
    fn reserve(&mut self, budget: &Mutex<Budget>, n: u64) -> Result<bool, CommError> {
        let mut b = lock(budget);
        match b.inner.reserve(n) {
            Ok(()) => {
                self.reserved += n;
                Ok(true)
            }
            Err(_) if b.queued > 0 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Checks a part's length against the phase's limits, before any of its bytes are held.
    fn check_part(&self, flags: u8, len: u64) -> Result<(), CommError> {
        let index = self.parts.len();
        if flags & FLAG_COMMAND != 0 {
            if index > 0 {
                return Err(CommError::protocol("ZMTP command inside a multipart message"));
            }
            if flags & FLAG_MORE != 0 {
                return Err(CommError::protocol("ZMTP command with the MORE flag"));
            }
            if len > CONTROL_MAX {
                return Err(CommError::new(
                    ErrorKind::FrameTooLarge,
                    format!("ZMTP command of {len} bytes exceeds {CONTROL_MAX} bytes"),
                ));
            }
            return Ok(());
        }
        let control = |what: &str| -> Result<(), CommError> {
            if index >= CONTROL_PARTS {
                return Err(CommError::protocol(format!("{what} with more than {CONTROL_PARTS} parts")));
            }
            if len > CONTROL_MAX {
                return Err(CommError::new(
                    ErrorKind::FrameTooLarge,
                    format!("{what}: a part of {len} bytes exceeds {CONTROL_MAX} bytes"),
                ));
            }
            Ok(())
        };
        match self.phase {
            Phase::Handshake => control("zmq:// handshake message"),
            Phase::Session(limits) => {
                if index == 0 {
                    if len != 1 {
                        return Err(CommError::protocol(format!("zmq:// kind part of {len} bytes (must be 1)")));
                    }
                    return Ok(());
                }
                if self.parts[0][0] != KIND_MESSAGE {
                    return control("zmq:// control message");
                }
                let too_large = |what: String, limit: u64| {
                    CommError::new(ErrorKind::FrameTooLarge, format!("{what} exceeds the limit of {limit} bytes"))
                };
                if index == 1 && len > limits.max_header_size {
                    return Err(too_large(format!("header of {len} bytes"), limits.max_header_size));
                }
                if index >= 2 {
                    let frame = index - 2;
                    if frame as u64 >= u64::from(limits.max_frames) {
                        return Err(CommError::new(
                            ErrorKind::FrameTooLarge,
                            format!("more than {} frames exceed the limit of {} frames", frame, limits.max_frames),
                        ));
                    }
                    if len > limits.max_frame_size {
                        return Err(too_large(format!("frame {frame} of {len} bytes"), limits.max_frame_size));
                    }
                }
                let total = self.msg_len.saturating_add(len);
                if total > limits.max_message_size {
                    return Err(too_large(format!("message of {total} bytes"), limits.max_message_size));
                }
                Ok(())
            }
        }
    }

    fn step(&mut self, src: &mut BytesMut, budget: &Mutex<Budget>) -> Result<Step, CommError> {
        loop {
            match &mut self.state {
                State::Failed => return Err(CommError::protocol("zmq:// decoder used after a protocol error")),
                State::Greeting => {
                    let n = src.len().min(GREETING_LEN);
                    if !check_greeting(&src[..n])? {
                        return Ok(Step::NeedBytes);
                    }
                    src.advance(GREETING_LEN);
                    self.state = State::Flags;
                    return Ok(Step::Event(Event::Greeting));
                }
                State::Flags => {
                    if src.is_empty() {
                        return Ok(Step::NeedBytes);
                    }
                    let flags = src[0];
                    if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
                        return Err(CommError::protocol(format!("ZMTP frame flags {flags:#04x} use reserved bits")));
                    }
                    src.advance(1);
                    self.state = State::Size { flags };
                }
                State::Size { flags } => {
                    let flags = *flags;
                    let len = if flags & FLAG_LONG != 0 {
                        if src.len() < 8 {
                            return Ok(Step::NeedBytes);
                        }
                        src.get_u64()
                    } else {
                        if src.is_empty() {
                            return Ok(Step::NeedBytes);
                        }
                        u64::from(src.get_u8())
                    };
                    self.check_part(flags, len)?;
                    let len = usize::try_from(len)
                        .map_err(|_| CommError::new(ErrorKind::FrameTooLarge, "ZMTP frame length overflows"))?;
                    self.state = State::Body { flags, len, buf: None };
                }
                State::Body { flags, len, buf } => {
                    let (flags, len) = (*flags, *len);
                    let current = buf.take();
                    let small = len < DIRECT_READ_MIN || flags & FLAG_COMMAND != 0;
                    let part = if current.is_none() && small && src.len() >= len {
                        // Small and already here: take it from the read buffer.
                        if !self.reserve(budget, len as u64 + PART_OVERHEAD)? {
                            return Ok(Step::NeedBudget);
                        }
                        src.split_to(len).freeze()
                    } else {
                        let mut b = match current {
                            Some(b) => b,
                            None => {
                                // Reserved before allocating; nothing changes on `NeedBudget`.
                                let first = len.min(self.speculative);
                                if !self.reserve(budget, first as u64 + PART_OVERHEAD)? {
                                    return Ok(Step::NeedBudget);
                                }
                                AlignedBuf::try_new(first)?
                            }
                        };
                        let n = b.remaining().min(src.len());
                        b.put_slice(&src[..n]);
                        src.advance(n);
                        if !b.is_full() {
                            self.state = State::Body { flags, len, buf: Some(b) };
                            return Ok(Step::NeedBytes);
                        }
                        if b.len() < len {
                            // A large part: its buffer doubles as bytes arrive.
                            let grown = len.min(b.len().saturating_mul(2));
                            if !self.reserve(budget, (grown - b.len()) as u64)? {
                                self.state = State::Body { flags, len, buf: Some(b) };
                                return Ok(Step::NeedBudget);
                            }
                            let mut bigger = AlignedBuf::try_new(grown)?;
                            bigger.put_slice(b.filled());
                            self.state = State::Body { flags, len, buf: Some(bigger) };
                            continue;
                        }
                        b.freeze()
                    };
                    self.state = State::Flags;
                    if flags & FLAG_COMMAND != 0 {
                        lock(budget).inner.release(self.reserved);
                        self.reserved = 0;
                        return Ok(Step::Event(Event::Command(Command::parse(part)?)));
                    }
                    if !self.parts.is_empty() {
                        self.msg_len += part.len() as u64;
                    }
                    self.parts.push(part);
                    if flags & FLAG_MORE == 0 {
                        let parts = std::mem::take(&mut self.parts);
                        self.msg_len = 0;
                        let held = std::mem::take(&mut self.reserved);
                        let is_message =
                            matches!(self.phase, Phase::Session(_)) && parts[0].first() == Some(&KIND_MESSAGE);
                        let mut b = lock(budget);
                        if is_message {
                            b.queued += held;
                            return Ok(Step::Event(Event::Message(parts, held)));
                        }
                        b.inner.release(held);
                        return Ok(Step::Event(Event::Message(parts, 0)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64) -> Mutex<Budget> {
        Budget::new(RecvBudget::new(limit, None))
    }

    fn wire(parts: &[Bytes]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_message(parts, &mut out);
        out.concat()
    }

    fn session() -> Decoder {
        let mut d = Decoder::new();
        d.state = State::Flags;
        d.enter_session(Limits::default());
        d
    }

    /// Feeds `bytes` in pieces of `split` and collects the events.
    fn feed(d: &mut Decoder, b: &Mutex<Budget>, bytes: &[u8], split: usize) -> Result<Vec<Event>, CommError> {
        let mut src = BytesMut::new();
        let mut events = Vec::new();
        for chunk in bytes.chunks(split.max(1)) {
            src.extend_from_slice(chunk);
            loop {
                match d.decode(&mut src, b)? {
                    Step::Event(e) => events.push(e),
                    Step::NeedBytes => break,
                    Step::NeedBudget => panic!("budget"),
                }
            }
        }
        Ok(events)
    }

    #[test]
    fn messages_round_trip_from_every_split() {
        let big = Bytes::from((0..70_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let parts = vec![Bytes::from_static(b"M"), Bytes::from_static(b"header"), Bytes::new(), big.clone()];
        let bytes = wire(&parts);
        for split in [1, 2, 7, 300, 4096, bytes.len()] {
            let mut d = session().with_speculative_max(1000);
            let b = budget(1 << 20);
            let events = feed(&mut d, &b, &bytes, split).unwrap();
            let [Event::Message(got, held)] = &events[..] else { panic!("{events:?}") };
            assert_eq!(got, &parts, "split {split}");
            assert!(*held >= big.len() as u64, "the message keeps its reservation");
            assert_eq!(lock(&b).queued, *held);
            assert_eq!(got[3].as_ptr() as usize % 64, 0, "frames arrive aligned");
        }
    }

    #[test]
    fn greeting_and_commands() {
        let mut d = Decoder::new();
        let b = budget(1 << 20);
        let mut bytes = greeting().to_vec();
        bytes.extend_from_slice(&ready("DEALER", Some(b"me")));
        bytes.extend_from_slice(&command_frame("PING", &[0, 10, b'x']));
        let events = feed(&mut d, &b, &bytes, 3).unwrap();
        assert!(matches!(events[0], Event::Greeting));
        let Event::Command(Command::Ready(props)) = &events[1] else { panic!("{events:?}") };
        assert_eq!(Command::property(props, "socket-type").unwrap(), Bytes::from_static(b"DEALER"));
        assert_eq!(Command::property(props, "Identity").unwrap(), Bytes::from_static(b"me"));
        assert!(matches!(&events[2], Event::Command(Command::Ping { context }) if &context[..] == b"x"));
        assert_eq!(lock(&b).inner.used(), 0, "commands hold nothing");
    }

    #[test]
    fn garbage_is_refused_at_its_first_byte() {
        for bad in [&b"CRWR"[..], b"GET / HTTP/1.1\r\n", &[0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 2]] {
            let e = feed(&mut Decoder::new(), &budget(100), bad, 1).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        }
        let mut g = greeting();
        g[12..16].copy_from_slice(b"CURV");
        let e = feed(&mut Decoder::new(), &budget(100), &g, 64).unwrap_err();
        assert!(e.to_string().contains("mechanism"), "{e}");
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        // Before the handshake, 2^40 bytes announced after a greeting: refused on the length.
        let mut bytes = greeting().to_vec();
        bytes.push(FLAG_LONG);
        bytes.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let b = budget(1 << 20);
        let e = feed(&mut Decoder::new(), &b, &bytes, 74).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        assert_eq!(lock(&b).inner.used(), 0);
        // In a session, a frame over the limit; a huge but allowed frame commits memory only
        // as its bytes arrive.
        let mut d = session();
        d.enter_session(Limits { max_frame_size: 1 << 20, ..Limits::default() });
        let mut msg = vec![FLAG_MORE, 1, b'M', FLAG_MORE, 0, FLAG_LONG];
        msg.extend_from_slice(&(2u64 << 20).to_be_bytes());
        assert_eq!(feed(&mut d, &b, &msg, 100).unwrap_err().kind(), ErrorKind::FrameTooLarge);
        let mut d = session().with_speculative_max(4096);
        let mut msg = vec![FLAG_MORE, 1, b'M', FLAG_MORE, 0, FLAG_LONG];
        msg.extend_from_slice(&(4u64 << 30).to_be_bytes());
        msg.extend_from_slice(&[7; 100]);
        assert!(feed(&mut d, &b, &msg, 1000).unwrap().is_empty());
        assert!(lock(&b).inner.used() < 8192, "committed {}", lock(&b).inner.used());
        // Reserved flag bits, commands inside a message, a kind part of two bytes.
        for bad in [&[0x80u8, 0][..], &[FLAG_MORE, 1, b'M', FLAG_COMMAND, 0], &[0, 2, b'M', b'M']] {
            let e = feed(&mut session(), &budget(1 << 20), bad, 1).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol, "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_full_budget_waits_for_the_application_then_fails_when_nothing_is_queued() {
        let frame = Bytes::from(vec![1u8; 40_000]);
        let bytes = wire(&[Bytes::from_static(b"M"), Bytes::new(), frame]);
        let b = budget(60_000);
        let mut d = session();
        let mut src = BytesMut::from(&bytes[..]);
        let Step::Event(Event::Message(_, held)) = d.decode(&mut src, &b).unwrap() else { panic!() };
        src.extend_from_slice(&bytes);
        assert!(matches!(d.decode(&mut src, &b).unwrap(), Step::NeedBudget), "waits while a message is queued");
        {
            let mut g = lock(&b);
            g.inner.release(held);
            g.queued -= held;
        }
        assert!(matches!(d.decode(&mut src, &b).unwrap(), Step::Event(Event::Message(..))));
        let mut d = session();
        let b = budget(10_000);
        let e = d.decode(&mut BytesMut::from(&bytes[..]), &b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        assert_eq!(lock(&b).inner.used(), 0, "a failed decoder holds nothing");
    }
}
