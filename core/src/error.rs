//! The one error type of the comm layer.

use std::fmt;
use std::io;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, coarsely: the part of an error callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No transport is registered for the URL's scheme.
    UnsupportedScheme,
    /// The address could not be parsed, or the transport cannot use it.
    InvalidAddress,
    /// Connecting (including retries) did not succeed within the connect timeout.
    ConnectTimeout,
    /// The peer actively refused the connection (nothing listens there).
    ConnectionRefused,
    /// The handshake did not complete within the handshake timeout.
    HandshakeTimeout,
    /// The comm or listener is closed, by either side, or the peer died.
    Closed,
    /// A frame, header, frame count or whole message exceeds a configured limit.
    FrameTooLarge,
    /// The peer violated the wire protocol (bad magic, version mismatch, garbage).
    Protocol,
    /// A compressed frame could not be decompressed.
    Compression,
    /// The address is already taken (a listener is bound there).
    AddressInUse,
    /// A message's content could not be (de)serialized: malformed MessagePack, a frame
    /// reference out of range, an array whose dtype, shape or size does not fit its data.
    Serialization,
    /// A request got no reply within its timeout (the peer may be stalled or overloaded).
    Timeout,
    /// The peer refused this side's credential, or this side refused the peer's.
    Unauthorized,
    /// Any other I/O failure.
    Io,
}

impl ErrorKind {
    /// A short lowercase name, used in `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UnsupportedScheme => "unsupported scheme",
            ErrorKind::InvalidAddress => "invalid address",
            ErrorKind::ConnectTimeout => "connect timeout",
            ErrorKind::ConnectionRefused => "connection refused",
            ErrorKind::HandshakeTimeout => "handshake timeout",
            ErrorKind::Closed => "comm closed",
            ErrorKind::FrameTooLarge => "frame too large",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Compression => "compression error",
            ErrorKind::AddressInUse => "address in use",
            ErrorKind::Serialization => "serialization error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Io => "i/o error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from the comm layer: a kind, a message saying what this layer was doing, and
/// the underlying cause as [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CommError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Source>,
}

impl CommError {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CommError { kind, message: message.into(), source: None }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// This layer's message, without the kind or the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when the comm is closed or the peer is gone.
    pub fn is_closed(&self) -> bool {
        self.kind == ErrorKind::Closed
    }

    /// A `Closed` error.
    pub fn closed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Closed, message)
    }

    /// A `Protocol` error.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, message)
    }

    /// An `InvalidAddress` error.
    pub fn invalid_address(input: &str, why: impl fmt::Display) -> Self {
        Self::new(ErrorKind::InvalidAddress, format!("{input:?}: {why}"))
    }

    /// Maps an I/O error met while `doing` something to the right kind: resets, broken pipes
    /// and EOFs are `Closed`, refusals `ConnectionRefused`, the rest `Io`.
    pub fn from_io(doing: impl fmt::Display, err: io::Error) -> Self {
        use io::ErrorKind as K;
        let kind = match err.kind() {
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof | K::NotConnected => {
                ErrorKind::Closed
            }
            K::ConnectionRefused => ErrorKind::ConnectionRefused,
            K::AddrInUse => ErrorKind::AddressInUse,
            K::TimedOut => ErrorKind::ConnectTimeout,
            _ => ErrorKind::Io,
        };
        CommError::new(kind, doing.to_string()).with_source(err)
    }
}

impl From<CommError> for io::Error {
    /// A deliberate conversion for callers living in `io::Result`: `Closed` becomes
    /// `BrokenPipe`, refusals and timeouts keep their io meaning, the rest is `Other`.
    fn from(err: CommError) -> io::Error {
        let kind = match err.kind {
            ErrorKind::Closed => io::ErrorKind::BrokenPipe,
            ErrorKind::ConnectionRefused => io::ErrorKind::ConnectionRefused,
            ErrorKind::ConnectTimeout | ErrorKind::HandshakeTimeout => io::ErrorKind::TimedOut,
            ErrorKind::InvalidAddress => io::ErrorKind::InvalidInput,
            ErrorKind::AddressInUse => io::ErrorKind::AddrInUse,
            ErrorKind::Protocol | ErrorKind::FrameTooLarge | ErrorKind::Compression => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds() {
        let e = CommError::from_io("reading", io::Error::from(io::ErrorKind::UnexpectedEof));
        assert!(e.is_closed());
        let e = CommError::from_io("connecting", io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        assert!(std::error::Error::source(&e).is_some());
        let back: io::Error = CommError::closed("gone").into();
        assert_eq!(back.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn display_is_kind_and_message() {
        let e = CommError::new(ErrorKind::Protocol, "bad magic");
        assert_eq!(e.to_string(), "protocol error: bad magic");
    }
}
