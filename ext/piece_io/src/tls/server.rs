//! Vortex over mutual TLS in native code, the server (parent) side: a rustls `ServerConnection` over an accepted
//! non-blocking socket, driven in steps that never wait.
//!
//! The caller (the asyncio Vortex server) owns the socket and its readiness: every step does what the socket
//! allows now and returns `Want::Read` or `Want::Write` when it would block, and the event loop waits for that
//! before calling again, with its own timeout. So a silent or trickling client costs a socket and a small buffer,
//! never a thread or the loop; that is why this is not a blocking serving loop on worker threads (which would hold a
//! thread for as long as a client dawdles, up to the timeout, per connection).
//!
//! Sending a piece reads the content file into a per-connection chunk (pread), rustls encrypts each chunk into TLS
//! records, and the records go out several per `sendmsg`; no Python object per chunk or record. The trust rules are
//! those of `dragonfly.common.tls.server_ssl_context`: TLS 1.2 or 1.3, a client certificate is required and its
//! chain must lead to the cluster CA (and be valid for client authentication); this host's chain is presented.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ServerConfig, ServerConnection};

use super::{identity, tls_error, FdReader, FdWriter};
use crate::sys::{is_would_block, pread_once};
use crate::{Error, Result};

/// Plaintext bytes read from the content file per pread, and the most ciphertext rustls queues before it must be
/// written: 8 records per `sendmsg`. A connection whose reader stalls holds about twice this.
const SEND_CHUNK: usize = 128 * 1024;

/// What a step waits for before it can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Read,
    Write,
}

/// Build the server configuration from PEM bytes: the cluster CA(s) that client certificates must lead to, this
/// host's certificate chain and key.
pub fn server_config(ca_pem: &[u8], chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>> {
    let (roots, chain, key) = identity(ca_pem, chain_pem, key_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Required: a client without a certificate of the cluster CA fails the handshake.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|err| tls_error("caCert", err))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| tls_error("protocol versions", err))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|err| tls_error("cert/key", err))?;
    Ok(Arc::new(config))
}

/// What `read_packets` got from the socket.
enum Fed {
    Records,
    Empty,
    Closed,
}

/// One TLS server connection over an accepted non-blocking socket the caller owns (and keeps open while this
/// lives), plus the send in progress: a head (the metadata frame) then a file range.
pub struct TlsServerStream {
    conn: ServerConnection,
    fd: RawFd,
    head_len: usize,
    head_sent: usize,
    file_fd: RawFd,
    begin: u64,
    pos: u64,
    end: u64,
    /// File bytes read and not yet taken by rustls: `chunk[start..filled]`. Allocated per send and dropped at its
    /// end, so an idle kept-alive connection holds no chunk.
    chunk: Vec<u8>,
    start: usize,
    filled: usize,
}

impl TlsServerStream {
    /// Prepare a connection on the accepted socket `fd`; no I/O until `handshake`.
    pub fn new(config: Arc<ServerConfig>, fd: RawFd) -> Result<Self> {
        let mut conn = ServerConnection::new(config).map_err(|err| tls_error("handshake", err))?;
        conn.set_buffer_limit(Some(SEND_CHUNK));
        Ok(TlsServerStream {
            conn,
            fd,
            head_len: 0,
            head_sent: 0,
            file_fd: -1,
            begin: 0,
            pos: 0,
            end: 0,
            chunk: Vec::new(),
            start: 0,
            filled: 0,
        })
    }

    /// Advance the handshake; None once it is complete (and its last records are written).
    pub fn handshake(&mut self) -> Result<Option<Want>> {
        loop {
            if let Some(want) = self.flush()? {
                return Ok(Some(want));
            }
            if !self.conn.is_handshaking() {
                return Ok(None);
            }
            match self.read_packets()? {
                Fed::Records => {}
                Fed::Empty => return Ok(Some(Want::Read)),
                Fed::Closed => {
                    return Err(Error::Tls(
                        "handshake: the client closed the connection".into(),
                    ))
                }
            }
        }
    }

    /// Copy up to `out.len()` plaintext bytes into `out`: Ok(n), 0 when the client closed the connection.
    pub fn recv(&mut self, out: &mut [u8]) -> Result<std::result::Result<usize, Want>> {
        loop {
            match self.conn.reader().read(out) {
                Ok(n) => return Ok(Ok(n)),
                Err(err) if is_would_block(&err) => {}
                // A TCP close without close_notify: the end of the stream, as Python's ssl reports it by default.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(Ok(0)),
                Err(err) => return Err(err.into()),
            }
            // Records rustls owes the client (a key update, an alert) go first: it may wait for them.
            if let Some(want) = self.flush()? {
                return Ok(Err(want));
            }
            match self.read_packets()? {
                Fed::Records => {}
                Fed::Empty => return Ok(Err(Want::Read)),
                Fed::Closed => return Ok(Ok(0)),
            }
        }
    }

    /// Start sending `head_len` bytes of a head, then `length` bytes of `file_fd` from `offset`; `send_some` sends.
    pub fn start_send(
        &mut self,
        head_len: usize,
        file_fd: RawFd,
        offset: u64,
        length: u64,
    ) -> Result<()> {
        if self.sending() {
            return Err(Error::InvalidArgument(
                "a send is already in progress on this connection".into(),
            ));
        }
        if length > 0 && file_fd < 0 {
            return Err(Error::InvalidArgument(
                "file_fd must be a file descriptor when length > 0".into(),
            ));
        }
        offset
            .checked_add(length)
            .ok_or_else(|| Error::InvalidArgument("offset + length overflows".into()))?;
        (self.head_len, self.head_sent) = (head_len, 0);
        (self.file_fd, self.begin, self.pos, self.end) = (file_fd, offset, offset, offset + length);
        Ok(())
    }

    /// Whether a send is unfinished (bytes not yet given to rustls, or records not yet written).
    fn sending(&self) -> bool {
        self.head_sent < self.head_len || self.start < self.filled || self.pos < self.end
    }

    /// Send what the socket takes now of the send `start_send` began (`head` is its head, the same bytes every
    /// call); None when all is written to the socket.
    pub fn send_some(&mut self, head: &[u8]) -> Result<Option<Want>> {
        if head.len() != self.head_len {
            return Err(Error::InvalidArgument(format!(
                "head must be the {} bytes given to start_send, got {}",
                self.head_len,
                head.len()
            )));
        }
        loop {
            if let Some(want) = self.flush()? {
                return Ok(Some(want));
            }
            let taken = if self.head_sent < self.head_len {
                let n = self.conn.writer().write(&head[self.head_sent..])?;
                self.head_sent += n;
                n
            } else if self.start < self.filled {
                let n = self
                    .conn
                    .writer()
                    .write(&self.chunk[self.start..self.filled])?;
                self.start += n;
                n
            } else if self.pos < self.end {
                self.read_chunk()?;
                continue;
            } else {
                self.chunk = Vec::new();
                (self.start, self.filled) = (0, 0);
                return Ok(None);
            };
            if taken == 0 && !self.conn.wants_write() {
                return Err(Error::Tls("send: the connection takes no more data".into()));
            }
        }
    }

    /// Read the next chunk of the file range into `chunk`.
    fn read_chunk(&mut self) -> Result<()> {
        let want = (self.end - self.pos).min(SEND_CHUNK as u64) as usize;
        if self.chunk.len() < want {
            self.chunk = vec![0; SEND_CHUNK];
        }
        let n = pread_once(self.file_fd, &mut self.chunk[..want], self.pos)?;
        if n == 0 {
            return Err(Error::Eof {
                expected: self.end - self.begin,
                sent: self.pos - self.begin,
            });
        }
        (self.start, self.filled) = (0, n);
        self.pos += n as u64;
        Ok(())
    }

    /// Write queued TLS records until none is left (None) or the socket is full (Want::Write).
    fn flush(&mut self) -> Result<Option<Want>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut FdWriter(self.fd)) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if is_would_block(&err) => return Ok(Some(Want::Write)),
                Err(err) => return Err(err.into()),
            }
        }
        Ok(None)
    }

    /// Read what the socket holds into rustls and process it; a TLS error queues an alert, written if it fits.
    fn read_packets(&mut self) -> Result<Fed> {
        loop {
            match self.conn.read_tls(&mut FdReader(self.fd)) {
                Ok(0) => return Ok(Fed::Closed),
                Ok(_) => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if is_would_block(&err) => return Ok(Fed::Empty),
                Err(err) => return Err(err.into()),
            }
        }
        if let Err(err) = self.conn.process_new_packets() {
            // Tell the client why, if the socket takes it now; the error is what the caller sees.
            let _ = self.flush();
            let context = if self.conn.is_handshaking() {
                "handshake"
            } else {
                "connection"
            };
            return Err(tls_error(context, err));
        }
        Ok(Fed::Records)
    }
}
