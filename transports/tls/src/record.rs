//! TLS 1.3 record protection for established sessions (RFC 8446 §5), done here rather than
//! inside rustls.
//!
//! rustls runs the handshake and keeps the key schedule ([`rustls::kernel`], the interface
//! it offers for kernel TLS). This module seals and opens the records with the negotiated
//! AEAD from *ring*, the provider rustls itself uses. Reasons, measured in results/:
//!
//! - **Receiving decrypts in place in the destination.** The stream reader asks for the
//!   rest of a large frame at once. The socket's bytes are read straight into that buffer,
//!   and each record is opened there with *ring*'s `open_within`, which moves the plaintext
//!   down over the previous record's header and tag as it decrypts. A frame's bytes pass the
//!   CPU twice (the kernel's copy and the decryption) instead of four times (rustls copies
//!   each record into its deframer buffer, decrypts it, queues the plaintext and copies it
//!   out).
//! - **Sending encrypts many records per system call.** Writes are cut into full-size
//!   records sealed into one reused buffer of up to [`OUT_PLAINTEXT`] bytes, which goes out
//!   with one `write`; small writes (headers, small frames) share records.
//!
//! Only TLS 1.3 is spoken: its records have one layout for every cipher suite. KeyUpdate is
//! supported both ways: a writer updates its keys every [`KEY_UPDATE_RECORDS`] records (or
//! the suite's confidentiality limit, if lower), and answers a peer's request.
//! NewSessionTicket messages from a server are handed to rustls. Any other record, a record
//! that fails authentication, or one larger than the RFC allows ends the session with an
//! `InvalidData` error; a fatal alert from the peer is reported with its name.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{AlertDescription, ConnectionTrafficSecrets, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A record's header: type, legacy version, length.
pub const HEADER_LEN: usize = 5;
/// The AEAD tag of every TLS 1.3 cipher suite.
pub const TAG_LEN: usize = 16;
/// Most plaintext in one record.
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Most ciphertext in one record (RFC 8446 §5.2).
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Plaintext sealed per outgoing write: 64 records, one system call. Same-run A/B on
/// `courier compare` (tls:// / tcp:// at 1, 8 and 64 MiB, 2–4 rounds each): 256 KiB gave
/// 0.48–0.64, 1 MiB 0.58–0.77, 4 MiB 0.58–0.67; 1 MiB stays within a core's L2 cache.
pub const OUT_PLAINTEXT: usize = 1024 * 1024;
/// A writer updates its keys after this many records (about 256 GiB), or sooner if the
/// suite's confidentiality limit is lower.
pub const KEY_UPDATE_RECORDS: u64 = 1 << 24;
/// Reads for destinations with at least this much room go straight into them.
const DIRECT_MIN: usize = 2 * (HEADER_LEN + MAX_CIPHERTEXT);
/// The reader's own buffer: a large read's worth, and always room for a whole record.
const IN_BUFFER: usize = 256 * 1024;

const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {}", what.into()))
}

/// rustls's key schedule, shared by the two halves (only touched on key updates and tickets).
pub(crate) enum Schedule {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Schedule {
    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Schedule::Client(c) => c.update_tx_secret(),
            Schedule::Server(c) => c.update_tx_secret(),
        }
    }

    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Schedule::Client(c) => c.update_rx_secret(),
            Schedule::Server(c) => c.update_rx_secret(),
        }
    }

    fn suite(&self) -> SupportedCipherSuite {
        match self {
            Schedule::Client(c) => c.negotiated_cipher_suite(),
            Schedule::Server(c) => c.negotiated_cipher_suite(),
        }
    }
}

pub(crate) struct Shared {
    /// None for sessions made from bare keys ([`TlsRead::with_key`]).
    schedule: Option<Mutex<Schedule>>,
    /// The peer asked for a KeyUpdate: the writer sends one before its next record.
    update_requested: AtomicBool,
}

impl Shared {
    pub(crate) fn new(schedule: Schedule) -> Arc<Self> {
        Arc::new(Shared { schedule: Some(Mutex::new(schedule)), update_requested: AtomicBool::new(false) })
    }

    fn bare() -> Arc<Self> {
        Arc::new(Shared { schedule: None, update_requested: AtomicBool::new(false) })
    }

    fn schedule(&self) -> io::Result<std::sync::MutexGuard<'_, Schedule>> {
        let schedule = self
            .schedule
            .as_ref()
            .ok_or_else(|| invalid("a key update or ticket on a session without a key schedule"))?;
        // Neither half panics while holding it; a poisoned lock still holds a valid schedule.
        Ok(schedule.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The AEAD of a TLS 1.3 cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// TLS_AES_128_GCM_SHA256 (16-byte key).
    Aes128Gcm,
    /// TLS_AES_256_GCM_SHA384 (32-byte key).
    Aes256Gcm,
    /// TLS_CHACHA20_POLY1305_SHA256 (32-byte key).
    Chacha20Poly1305,
}

impl Cipher {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// One direction's AEAD key, IV and sequence number.
pub(crate) struct Protection {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Protection {
    pub(crate) fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> io::Result<Self> {
        let (cipher, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (Cipher::Chacha20Poly1305, key, iv),
            #[allow(unreachable_patterns)] // the enum is non-exhaustive
            _ => return Err(invalid("the negotiated cipher suite has no record protection here")),
        };
        Self::from_key(cipher, key.as_ref(), iv.as_ref(), seq)
    }

    fn from_key(cipher: Cipher, key: &[u8], iv: &[u8], seq: u64) -> io::Result<Self> {
        let key = UnboundKey::new(cipher.algorithm(), key).map_err(|_| invalid("traffic key of the wrong length"))?;
        let iv: [u8; aead::NONCE_LEN] = iv.try_into().map_err(|_| invalid("traffic IV of the wrong length"))?;
        Ok(Protection { key: LessSafeKey::new(key), iv, seq })
    }

    /// The per-record nonce (RFC 8446 §5.3); each sequence number is used once.
    fn next_nonce(&mut self) -> io::Result<Nonce> {
        let mut nonce = self.iv;
        for (n, s) in nonce[aead::NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq = self.seq.checked_add(1).ok_or_else(|| invalid("record sequence number exhausted"))?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Appends one record holding `parts` (at most [`MAX_PLAINTEXT`] bytes in all) of
    /// content type `typ` to `out`.
    fn seal<'a>(&mut self, typ: u8, parts: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        out.extend_from_slice(&[APPLICATION_DATA, 3, 3, 0, 0]);
        for p in parts {
            out.extend_from_slice(p);
        }
        out.push(typ);
        let len = out.len() - start - HEADER_LEN + TAG_LEN;
        debug_assert!(len <= MAX_PLAINTEXT + 1 + TAG_LEN);
        out[start + 3..start + HEADER_LEN].copy_from_slice(&(len as u16).to_be_bytes());
        let header: [u8; HEADER_LEN] = out[start..start + HEADER_LEN].try_into().expect("five bytes");
        let nonce = self.next_nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start + HEADER_LEN..])
            .map_err(|_| invalid("sealing a record failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens the record whose header is `header` and whose ciphertext and tag are
    /// `buf[src..]`, writing the inner plaintext to the start of `buf`. Returns the content
    /// type and the content's length.
    fn open(&mut self, header: [u8; HEADER_LEN], buf: &mut [u8], src: usize) -> io::Result<(u8, usize)> {
        let nonce = self.next_nonce()?;
        let inner = self
            .key
            .open_within(nonce, Aad::from(header), buf, src..)
            .map_err(|_| invalid("a record failed authentication (bad_record_mac)"))?;
        // The content type is the last non-zero byte; zeros after it are padding.
        let end = inner.iter().rposition(|&b| b != 0).ok_or_else(|| invalid("a record without a content type"))?;
        Ok((inner[end], end))
    }
}

/// The length of the record whose header starts `bytes`, once the header is there.
fn record_len(bytes: &[u8]) -> io::Result<Option<usize>> {
    let Some(header) = bytes.get(..HEADER_LEN) else { return Ok(None) };
    if header[0] != APPLICATION_DATA {
        return Err(invalid(format!("a record of outer type {} after the handshake", header[0])));
    }
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    if len > MAX_CIPHERTEXT {
        return Err(invalid(format!("a record of {len} bytes (at most {MAX_CIPHERTEXT}: record_overflow)")));
    }
    if len < TAG_LEN + 1 {
        return Err(invalid(format!("a record of {len} bytes, shorter than its tag and content type")));
    }
    Ok(Some(len))
}

/// What a record's content asks the reader to do.
enum Control {
    Data,
    /// The peer closed the session (close_notify): end of stream.
    Closed,
    /// Nothing for the reader (a ticket, a key update, a user_canceled warning).
    Consumed,
}

/// The receiving half of a TLS 1.3 session, on a TCP socket unless made
/// [`with_key`](TlsRead::with_key).
pub struct TlsRead<R = OwnedReadHalf> {
    io: R,
    rx: Protection,
    shared: Arc<Shared>,
    /// Bytes read but not yet delivered: `buf[start..end]` is ciphertext, unless
    /// `plain_end > start`, when `buf[start..plain_end]` is plaintext of an opened record.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    plain_end: usize,
    /// Application data that arrived with the handshake, delivered first.
    early: Vec<u8>,
    early_pos: usize,
    closed: bool,
}

impl<R> std::fmt::Debug for TlsRead<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRead").field("seq", &self.rx.seq).field("closed", &self.closed).finish_non_exhaustive()
    }
}

impl TlsRead {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &tokio::net::TcpStream {
        self.io.as_ref()
    }
}

impl<R: AsyncRead + Unpin> TlsRead<R> {
    /// A reader of records protected with `key` and `iv` from sequence number 0, with no key
    /// schedule behind it (a KeyUpdate or a ticket is an error): for tests, fuzzing and
    /// tools that take keys from elsewhere.
    pub fn with_key(io: R, cipher: Cipher, key: &[u8], iv: &[u8]) -> io::Result<Self> {
        Self::new(io, Protection::from_key(cipher, key, iv, 0)?, Shared::bare(), &[], Vec::new())
    }

    pub(crate) fn new(io: R, rx: Protection, shared: Arc<Shared>, leftover: &[u8], early: Vec<u8>) -> io::Result<Self> {
        let mut buf = vec![0u8; IN_BUFFER.max(leftover.len())].into_boxed_slice();
        buf[..leftover.len()].copy_from_slice(leftover);
        Ok(TlsRead {
            io,
            rx,
            shared,
            buf,
            start: 0,
            end: leftover.len(),
            plain_end: 0,
            early,
            early_pos: 0,
            closed: false,
        })
    }

    /// Acts on a record's content (any type but application data), given its bytes.
    fn control(&mut self, typ: u8, content: &[u8]) -> io::Result<Control> {
        match typ {
            APPLICATION_DATA => Ok(Control::Data),
            ALERT => {
                let [_level, description] = content else {
                    return Err(invalid(format!("an alert of {} bytes", content.len())));
                };
                match AlertDescription::from(*description) {
                    AlertDescription::CloseNotify => Ok(Control::Closed),
                    AlertDescription::UserCanceled => Ok(Control::Consumed),
                    other => Err(invalid(format!("the peer sent alert {other:?}"))),
                }
            }
            HANDSHAKE => {
                let mut rest = content;
                while !rest.is_empty() {
                    let &[kind, a, b, c, ref tail @ ..] = rest else {
                        return Err(invalid("a truncated post-handshake message"));
                    };
                    let len = u32::from_be_bytes([0, a, b, c]) as usize;
                    if tail.len() < len {
                        return Err(invalid("a post-handshake message split across records"));
                    }
                    let (body, after) = tail.split_at(len);
                    rest = after;
                    match kind {
                        NEW_SESSION_TICKET => match &mut *self.shared.schedule()? {
                            Schedule::Client(c) => c
                                .handle_new_session_ticket(body)
                                .map_err(|e| invalid(format!("a session ticket: {e}")))?,
                            Schedule::Server(_) => return Err(invalid("a client sent a session ticket")),
                        },
                        KEY_UPDATE => {
                            let requested = match body {
                                [0] => false,
                                [1] => true,
                                _ => return Err(invalid("a malformed KeyUpdate")),
                            };
                            if !rest.is_empty() {
                                return Err(invalid("a KeyUpdate not at the end of its record"));
                            }
                            let secrets =
                                self.shared.schedule()?.update_rx().map_err(|e| invalid(format!("KeyUpdate: {e}")))?;
                            self.rx = Protection::new(secrets)?;
                            if requested {
                                self.shared.update_requested.store(true, Ordering::Release);
                            }
                        }
                        other => return Err(invalid(format!("handshake message {other} after the handshake"))),
                    }
                }
                Ok(Control::Consumed)
            }
            other => Err(invalid(format!("a record of content type {other}"))),
        }
    }

    /// Reads straight into `dst`'s free space and opens every whole record there, packing
    /// the plaintext at the front. A trailing partial record moves to the reader's buffer.
    /// Returns the plaintext bytes made, or `None` at the end of the TCP stream.
    fn poll_direct(&mut self, cx: &mut Context<'_>, dst: &mut ReadBuf<'_>) -> Poll<io::Result<Option<usize>>> {
        let n = {
            // SAFETY: only the socket read writes into the region, and it writes initialised
            // bytes, as `ReadBuf::unfilled_mut` requires.
            let mut sub = ReadBuf::uninit(unsafe { dst.unfilled_mut() });
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut sub))?;
            sub.filled().len()
        };
        if n == 0 {
            return Poll::Ready(Ok(None));
        }
        // SAFETY: the socket read initialised the first `n` bytes of the unfilled region.
        unsafe { dst.assume_init(n) };
        let filled = dst.filled().len();
        let region = &mut dst.initialized_mut()[filled..filled + n];
        let (mut packed, mut at) = (0, 0);
        let mut closed = false;
        while let Some(len) = record_len(&region[at..])? {
            if region.len() - at < HEADER_LEN + len {
                break;
            }
            let header: [u8; HEADER_LEN] = region[at..at + HEADER_LEN].try_into().expect("five bytes");
            let (typ, content) =
                self.rx.open(header, &mut region[packed..at + HEADER_LEN + len], at + HEADER_LEN - packed)?;
            at += HEADER_LEN + len;
            match typ {
                APPLICATION_DATA => packed += content,
                _ => {
                    let bytes = region[packed..packed + content].to_vec();
                    match self.control(typ, &bytes)? {
                        Control::Closed => {
                            closed = true;
                            break;
                        }
                        Control::Data | Control::Consumed => {}
                    }
                }
            }
        }
        if !closed {
            let tail = &region[at..];
            self.buf[..tail.len()].copy_from_slice(tail);
            (self.start, self.end, self.plain_end) = (0, tail.len(), 0);
        }
        self.closed = closed;
        dst.advance(packed);
        Poll::Ready(Ok(Some(packed)))
    }
}

fn eof_without_close_notify() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "TLS: the peer closed the connection without close_notify")
}

impl<R: AsyncRead + Unpin> AsyncRead for TlsRead<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, dst: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if dst.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.early_pos < this.early.len() {
                let n = dst.remaining().min(this.early.len() - this.early_pos);
                dst.put_slice(&this.early[this.early_pos..this.early_pos + n]);
                this.early_pos += n;
                if this.early_pos == this.early.len() {
                    this.early = Vec::new();
                    this.early_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.plain_end > this.start {
                let n = dst.remaining().min(this.plain_end - this.start);
                dst.put_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                if this.start == this.plain_end {
                    // All delivered: the records after it begin at `start`.
                    this.plain_end = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            // A whole record in the buffer: open it in place.
            if let Some(len) = record_len(&this.buf[this.start..this.end])?
                && this.end - this.start >= HEADER_LEN + len
            {
                let at = this.start;
                let header: [u8; HEADER_LEN] = this.buf[at..at + HEADER_LEN].try_into().expect("five bytes");
                let (typ, content) = this.rx.open(header, &mut this.buf[at..at + HEADER_LEN + len], HEADER_LEN)?;
                let next = at + HEADER_LEN + len;
                if typ == APPLICATION_DATA {
                    // Plaintext now at buf[at..at + content]; records resume at `next`.
                    let n = dst.remaining().min(content);
                    dst.put_slice(&this.buf[at..at + n]);
                    if n < content {
                        // Keep the rest just before the next record.
                        let rest = content - n;
                        this.buf.copy_within(at + n..at + content, next - rest);
                        (this.start, this.plain_end) = (next - rest, next);
                    } else {
                        this.start = next;
                    }
                    if n > 0 {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                let bytes = this.buf[at..at + content].to_vec();
                this.start = next;
                if let Control::Closed = this.control(typ, &bytes)? {
                    this.closed = true;
                }
                continue;
            }
            // Nothing buffered and room in the destination: read straight into it.
            if this.start == this.end && dst.remaining() >= DIRECT_MIN {
                match ready!(this.poll_direct(cx, dst))? {
                    None => return Poll::Ready(Err(eof_without_close_notify())),
                    Some(0) => continue,
                    Some(_) => return Poll::Ready(Ok(())),
                }
            }
            // Otherwise read into the buffer, keeping the partial record at its front. With
            // room in the destination, read only the rest of that record, so that the read
            // after it goes straight to the destination.
            if this.start > 0 {
                this.buf.copy_within(this.start..this.end, 0);
                (this.end, this.start) = (this.end - this.start, 0);
            }
            let limit = if dst.remaining() >= DIRECT_MIN {
                match record_len(&this.buf[..this.end])? {
                    Some(len) => HEADER_LEN + len,
                    None => HEADER_LEN,
                }
            } else {
                this.buf.len()
            };
            let mut rb = ReadBuf::new(&mut this.buf[this.end..limit]);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(eof_without_close_notify()));
            }
            this.end += n;
        }
    }
}

/// The sending half of a TLS 1.3 session, on a TCP socket unless made
/// [`with_key`](TlsWrite::with_key).
pub struct TlsWrite<W = OwnedWriteHalf> {
    io: W,
    tx: Protection,
    shared: Arc<Shared>,
    /// Sealed records: `out[sent..]` is still to be written.
    out: Vec<u8>,
    sent: usize,
    update_after: u64,
    close_sent: bool,
}

impl<W> std::fmt::Debug for TlsWrite<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsWrite")
            .field("seq", &self.tx.seq)
            .field("close_sent", &self.close_sent)
            .finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin> TlsWrite<W> {
    /// A writer of records protected with `key` and `iv` from sequence number 0, with no key
    /// schedule behind it (it never updates its keys): for tests, fuzzing and tools.
    pub fn with_key(io: W, cipher: Cipher, key: &[u8], iv: &[u8]) -> io::Result<Self> {
        Ok(Self::new(io, Protection::from_key(cipher, key, iv, 0)?, Shared::bare(), u64::MAX))
    }

    /// The stream the records go to.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.io
    }

    pub(crate) fn new(io: W, tx: Protection, shared: Arc<Shared>, update_after: u64) -> Self {
        let limit = match shared.schedule() {
            Ok(s) => s.suite().tls13().map(|s| s.common.confidentiality_limit).unwrap_or(u64::MAX),
            Err(_) => u64::MAX,
        };
        let update_after = update_after.min(limit / 2).max(1);
        let out = Vec::with_capacity(OUT_PLAINTEXT + (OUT_PLAINTEXT / MAX_PLAINTEXT + 2) * (HEADER_LEN + 1 + TAG_LEN));
        TlsWrite { io, tx, shared, out, sent: 0, update_after, close_sent: false }
    }

    /// Writes out the sealed records.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, "the socket accepted no bytes")));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends a KeyUpdate under the current key and switches to the next one, when due or
    /// when the peer asked.
    fn maybe_update_keys(&mut self) -> io::Result<()> {
        let requested = self.shared.update_requested.swap(false, Ordering::AcqRel);
        if !requested && self.tx.seq < self.update_after {
            return Ok(());
        }
        // update_not_requested: this side's keys are due, or it answers the peer.
        self.tx.seal(HANDSHAKE, [&[KEY_UPDATE, 0, 0, 1, 0][..]], &mut self.out)?;
        let secrets = self.shared.schedule()?.update_tx().map_err(|e| invalid(format!("KeyUpdate: {e}")))?;
        self.tx = Protection::new(secrets)?;
        Ok(())
    }

    /// Seals up to [`OUT_PLAINTEXT`] bytes of `bufs` into records, small slices sharing
    /// records. Returns the bytes taken.
    fn seal_from(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut taken = 0;
        let (mut i, mut off) = (0, 0);
        while taken < OUT_PLAINTEXT && i < bufs.len() {
            self.maybe_update_keys()?;
            // Gather one record's worth of (slice, offset, len) pieces.
            let want = MAX_PLAINTEXT.min(OUT_PLAINTEXT - taken);
            let mut pieces: [(usize, usize, usize); 16] = [(0, 0, 0); 16];
            let (mut count, mut got) = (0, 0);
            while got < want && i < bufs.len() && count < pieces.len() {
                let n = (bufs[i].len() - off).min(want - got);
                if n > 0 {
                    pieces[count] = (i, off, n);
                    count += 1;
                    got += n;
                    off += n;
                }
                if off == bufs[i].len() {
                    i += 1;
                    off = 0;
                }
            }
            if got == 0 {
                break;
            }
            self.tx.seal(
                APPLICATION_DATA,
                pieces[..count].iter().map(|&(s, o, n)| &bufs[s][o..o + n]),
                &mut self.out,
            )?;
            taken += got;
        }
        Ok(taken)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for TlsWrite<W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS: the session was closed")));
        }
        let taken = this.seal_from(bufs)?;
        // Start sending at once; what the socket does not take goes with the next call.
        if let Poll::Ready(r) = this.poll_drain(cx) {
            r?;
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if !this.close_sent {
            this.close_sent = true;
            // close_notify: warning level, description 0.
            this.tx.seal(ALERT, [&[1u8, 0][..]], &mut this.out)?;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
