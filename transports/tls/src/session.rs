//! The TLS handshake, driven through rustls's unbuffered API on the TCP socket, and the
//! session it leaves: a [`TlsStream`] whose records [`crate::record`] protects.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, ExtractedSecrets, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::record::{HEADER_LEN, MAX_CIPHERTEXT, Protection, Schedule, Shared, TlsRead, TlsWrite};

/// Most handshake bytes buffered while waiting for a whole record or message.
const MAX_HANDSHAKE_BUFFER: usize = 256 * 1024;

fn rustls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The two kinds of unbuffered connection, as the handshake loop needs them.
trait Handshaking: Sized {
    type Data;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn into_schedule(self) -> Result<(ExtractedSecrets, Schedule), rustls::Error>;
}

impl Handshaking for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn into_schedule(self) -> Result<(ExtractedSecrets, Schedule), rustls::Error> {
        self.dangerous_into_kernel_connection().map(|(s, k)| (s, Schedule::Client(k)))
    }
}

impl Handshaking for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn into_schedule(self) -> Result<(ExtractedSecrets, Schedule), rustls::Error> {
        self.dangerous_into_kernel_connection().map(|(s, k)| (s, Schedule::Server(k)))
    }
}

/// Encodes whatever rustls has queued (handshake records, or the alert after a failure)
/// into `out`. Returns whether anything is to be transmitted.
fn encode_queued<C: Handshaking>(
    state: ConnectionState<'_, '_, C::Data>,
    out: &mut Vec<u8>,
    out_len: &mut usize,
) -> io::Result<Step> {
    Ok(match state {
        ConnectionState::EncodeTlsData(mut e) => loop {
            match e.encode(&mut out[*out_len..]) {
                Ok(n) => {
                    *out_len += n;
                    break Step::Continue;
                }
                Err(EncodeError::InsufficientSize(s)) => out.resize(*out_len + s.required_size, 0),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("TLS: encoding: {e}"))),
            }
        },
        ConnectionState::TransmitTlsData(t) => {
            t.done();
            Step::Transmit
        }
        ConnectionState::BlockedHandshake => Step::Read,
        ConnectionState::WriteTraffic(_) => Step::Done,
        ConnectionState::ReadTraffic(_) => Step::Data,
        ConnectionState::PeerClosed | ConnectionState::Closed => Step::Closed,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS: unexpected handshake state {other:?}"),
            ));
        }
    })
}

enum Step {
    Continue,
    Transmit,
    Read,
    Data,
    Done,
    Closed,
}

/// Runs the handshake on `tcp`. Returns the received bytes rustls left unprocessed (the
/// start of the next record) and any application data that came with the handshake.
async fn handshake<C: Handshaking>(conn: &mut C, tcp: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut incoming = vec![0u8; 2 * (HEADER_LEN + MAX_CIPHERTEXT)];
    let mut filled = 0;
    let mut out = vec![0u8; 4096];
    let mut out_len = 0;
    let mut early = Vec::new();
    loop {
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming[..filled]);
        let step = match state {
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while let Some(record) = r.next_record() {
                    early.extend_from_slice(record.map_err(rustls_error)?.payload);
                }
                Step::Data
            }
            Ok(state) => encode_queued::<C>(state, &mut out, &mut out_len)?,
            Err(e) => {
                // Tell the peer why, best effort: rustls queued an alert, which the next call
                // returns before it looks at the input. Only one call: a second would process
                // the failed bytes again.
                incoming.copy_within(discard..filled, 0);
                filled -= discard;
                if let Ok(state @ ConnectionState::EncodeTlsData(_)) = conn.process(&mut incoming[..filled]).state {
                    let _ = encode_queued::<C>(state, &mut out, &mut out_len);
                }
                let _ = tcp.write_all(&out[..out_len]).await;
                return Err(rustls_error(e));
            }
        };
        incoming.copy_within(discard..filled, 0);
        filled -= discard;
        match step {
            Step::Continue | Step::Data => {}
            Step::Transmit => {
                tcp.write_all(&out[..out_len]).await?;
                out_len = 0;
            }
            Step::Read => {
                if filled == incoming.len() {
                    if incoming.len() >= MAX_HANDSHAKE_BUFFER {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS: handshake messages too large"));
                    }
                    incoming.resize(incoming.len() * 2, 0);
                }
                let n = tcp.read(&mut incoming[filled..]).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS: the peer closed the connection during the handshake",
                    ));
                }
                filled += n;
            }
            Step::Done => break,
            Step::Closed => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "TLS: the peer closed the session"));
            }
        }
    }
    incoming.truncate(filled);
    Ok((incoming, early))
}

/// An established TLS 1.3 session on a TCP socket.
pub struct TlsStream {
    read: TlsRead,
    write: TlsWrite,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").field("peer", &self.read.tcp().peer_addr().ok()).finish_non_exhaustive()
    }
}

impl TlsStream {
    async fn establish<C: Handshaking>(mut conn: C, mut tcp: TcpStream, update_after: u64) -> io::Result<Self> {
        let (leftover, early) = handshake(&mut conn, &mut tcp).await?;
        let (secrets, schedule) = conn.into_schedule().map_err(rustls_error)?;
        let version = match &schedule {
            Schedule::Client(c) => c.protocol_version(),
            Schedule::Server(c) => c.protocol_version(),
        };
        if version != ProtocolVersion::TLSv1_3 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS: {version:?} negotiated; tls:// speaks TLS 1.3"),
            ));
        }
        let shared = Shared::new(schedule);
        let (read, write) = tcp.into_split();
        Ok(TlsStream {
            read: TlsRead::new(read, Protection::new(secrets.rx)?, shared.clone(), &leftover, early)?,
            write: TlsWrite::new(write, Protection::new(secrets.tx)?, shared, update_after),
        })
    }

    /// The client's handshake on `tcp`.
    pub(crate) async fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        tcp: TcpStream,
        update_after: u64,
    ) -> io::Result<Self> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(rustls_error)?;
        Self::establish(conn, tcp, update_after).await
    }

    /// The server's handshake on `tcp`.
    pub(crate) async fn server(config: Arc<ServerConfig>, tcp: TcpStream, update_after: u64) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(rustls_error)?;
        Self::establish(conn, tcp, update_after).await
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        self.read.tcp()
    }

    /// The two halves, to read and write from different tasks.
    pub fn into_split(self) -> (TlsRead, TlsWrite) {
        (self.read, self.write)
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}
