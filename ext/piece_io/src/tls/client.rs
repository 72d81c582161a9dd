//! Vortex over mutual TLS in native code, the client (child) side: the handshake, the request and the piece bytes
//! go through rustls on a caller-owned socket, with the CRC-32 and BLAKE3 of the piece computed on the way.
//!
//! Python's `ssl` hands out one TLS record (16 KiB) per `recv_into`, so a piece costs a Python call, two `read`
//! system calls and often a `poll` per record (bench/RESULTS.md §2). Here ciphertext is read up to `READ_CHUNK`
//! bytes per system call and the whole piece is received in one native call. The connection is rustls's unbuffered
//! one: records are deframed and decrypted where `recv` put them, so the buffered connection's copies (into its own
//! deframer, partial records moved to its front) are not paid; rustls 0.23 still hands each record's plaintext out
//! in a `Vec` of its own, which is copied once into the caller's buffer. The rules are those of
//! `dragonfly.common.tls.client_ssl_context`: TLS 1.2 or 1.3, the server's chain must lead to the cluster CA and
//! its certificate must name the IP it was dialled at (an IP SAN), and this host's certificate is presented.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ClientConfig;

use super::{identity, tls_error, FdReader, FdWriter};
use crate::sys::{is_would_block, pwrite_all, Waiter};
use crate::{Error, Result};

/// Ciphertext bytes asked of the socket per `recv`: several records per system call.
const READ_CHUNK: usize = 256 * 1024;

/// Build the client configuration from PEM bytes: the cluster CA(s), this host's certificate chain and key.
pub fn client_config(ca_pem: &[u8], chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ClientConfig>> {
    let (roots, chain, key) = identity(ca_pem, chain_pem, key_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| tls_error("protocol versions", err))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|err| tls_error("cert/key", err))?;
    Ok(Arc::new(config))
}

/// What driving the connection came to.
enum Step {
    /// The handshake is done and nothing is pending: application data may be sent (the caller's `send` was, when
    /// there was some) and more may be read.
    Ready,
    /// Plaintext arrived: this many bytes went into the caller's `out`, any more into `plain`.
    Plaintext(usize),
    /// The server closed the connection (close_notify or end of stream).
    Closed,
}

/// One TLS client connection over a connected socket the caller owns (and keeps open while this lives).
pub struct TlsStream {
    conn: UnbufferedClientConnection,
    fd: RawFd,
    /// Ciphertext read from the socket and not yet processed: `inbuf[start..used]`. Processed records are skipped
    /// (not moved out) until a read needs the room. Allocated for a read and dropped once drained after a piece,
    /// so an idle pooled connection does not hold READ_CHUNK bytes.
    inbuf: Vec<u8>,
    start: usize,
    used: usize,
    /// Plaintext decrypted and not yet taken: `plain[taken..]`.
    plain: Vec<u8>,
    taken: usize,
    /// TLS bytes to send: `outbuf[..out_used]`.
    outbuf: Vec<u8>,
    out_used: usize,
    /// The server ended the stream (close_notify or EOF).
    closed: bool,
}

impl TlsStream {
    /// Handshake on the connected socket `fd` with the server at `server_ip`; `timeout` bounds each wait.
    pub fn connect(
        config: Arc<ClientConfig>,
        fd: RawFd,
        server_ip: &str,
        timeout: Option<Duration>,
    ) -> Result<Self> {
        let ip: std::net::IpAddr = server_ip.parse().map_err(|_| {
            Error::InvalidArgument(format!(
                "server_ip must be an IP address, got {server_ip:?}"
            ))
        })?;
        let conn = UnbufferedClientConnection::new(config, ServerName::IpAddress(ip.into()))
            .map_err(|err| tls_error("handshake", err))?;
        let mut stream = TlsStream {
            conn,
            fd,
            inbuf: Vec::new(),
            start: 0,
            used: 0,
            plain: Vec::new(),
            taken: 0,
            outbuf: Vec::new(),
            out_used: 0,
            closed: false,
        };
        let mut waiter = Waiter::new(fd, libc::POLLIN, timeout);
        loop {
            match stream.step(&mut waiter, timeout, &mut [], &[])? {
                Step::Ready => break,
                // Nothing is expected before our request; kept for the first read.
                Step::Plaintext(_) => {}
                Step::Closed => {
                    return Err(Error::Tls(
                        "handshake: the server closed the connection".into(),
                    ))
                }
            }
        }
        stream.release_drained();
        Ok(stream)
    }

    /// Drop the read buffers when they hold nothing (see `inbuf`).
    fn release_drained(&mut self) {
        if self.start == self.used {
            self.inbuf = Vec::new();
            (self.start, self.used) = (0, 0);
        }
        if self.taken == self.plain.len() {
            self.plain = Vec::new();
            self.taken = 0;
        }
    }

    /// Process the buffered ciphertext until the connection has plaintext, is ready for application data or needs
    /// more bytes from the socket (then read them, waiting at most `timeout` without progress, and go on).
    /// Plaintext fills `out` first (no copy through `plain` for a caller with room), the rest goes to `plain`.
    /// Once ready, `send` (if not empty) is encrypted and written before this returns.
    fn step(
        &mut self,
        waiter: &mut Waiter,
        timeout: Option<Duration>,
        out: &mut [u8],
        send: &[u8],
    ) -> Result<Step> {
        loop {
            let UnbufferedStatus { mut discard, state } = self
                .conn
                .process_tls_records(&mut self.inbuf[self.start..self.used]);
            let mut transmit = false;
            let mut need_bytes = false;
            let outcome = match state {
                Err(err) => {
                    self.send_alert();
                    return Err(tls_error("connection", err));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    if self.taken == self.plain.len() {
                        self.plain.clear();
                        self.taken = 0;
                    }
                    let mut direct = 0;
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(|err| tls_error("connection", err))?;
                        discard += record.discard;
                        let n = record.payload.len().min(out.len() - direct);
                        out[direct..direct + n].copy_from_slice(&record.payload[..n]);
                        direct += n;
                        self.plain.extend_from_slice(&record.payload[n..]);
                    }
                    Some(Step::Plaintext(direct))
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    loop {
                        match data.encode(&mut self.outbuf[self.out_used..]) {
                            Ok(n) => {
                                self.out_used += n;
                                break;
                            }
                            Err(EncodeError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) => self.outbuf.resize(self.out_used + required_size, 0),
                            Err(err) => return Err(tls_error("handshake", err)),
                        }
                    }
                    None
                }
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done();
                    transmit = true;
                    None
                }
                Ok(ConnectionState::BlockedHandshake) => {
                    need_bytes = true;
                    None
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    while !send.is_empty() {
                        match traffic.encrypt(send, &mut self.outbuf[self.out_used..]) {
                            Ok(n) => {
                                self.out_used += n;
                                transmit = true;
                                break;
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) => self.outbuf.resize(self.out_used + required_size, 0),
                            Err(err) => return Err(tls_error("send", err)),
                        }
                    }
                    Some(Step::Ready)
                }
                Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => {
                    self.closed = true;
                    Some(Step::Closed)
                }
                Ok(_) => return Err(Error::Tls("connection: unexpected TLS state".into())),
            };
            self.start += discard;
            if transmit {
                self.send_pending(timeout)?;
            }
            if need_bytes && !self.fill(waiter)? {
                self.closed = true;
                return Ok(Step::Closed);
            }
            if let Some(step) = outcome {
                return Ok(step);
            }
        }
    }

    /// After an error, tell the server why (best effort, within a second): rustls queues an alert, which the next
    /// round of processing hands out to be encoded before it reports the error again.
    fn send_alert(&mut self) {
        self.out_used = 0;
        if let Ok(ConnectionState::EncodeTlsData(mut data)) = self
            .conn
            .process_tls_records(&mut self.inbuf[self.start..self.used])
            .state
        {
            self.outbuf.resize(self.outbuf.len().max(64), 0);
            if let Ok(n) = data.encode(&mut self.outbuf) {
                self.out_used = n;
            }
        }
        let _ = self.send_pending(Some(Duration::from_secs(1)));
    }

    /// Read more ciphertext (one `recv` of up to READ_CHUNK bytes, waiting for it); Ok(false) at end of stream.
    fn fill(&mut self, waiter: &mut Waiter) -> Result<bool> {
        // Move the unprocessed tail (at most a partial record) to the front, once per READ_CHUNK read.
        if self.start > 0 {
            self.inbuf.copy_within(self.start..self.used, 0);
            (self.start, self.used) = (0, self.used - self.start);
        }
        if self.inbuf.len() < self.used + READ_CHUNK {
            self.inbuf.resize(self.used + READ_CHUNK, 0);
        }
        let mut reader = FdReader(self.fd);
        loop {
            match reader.read(&mut self.inbuf[self.used..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.used += n;
                    waiter.progress();
                    return Ok(true);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if is_would_block(&err) => waiter.wait()?,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Write the TLS bytes waiting in `outbuf` to the socket.
    fn send_pending(&mut self, timeout: Option<Duration>) -> Result<()> {
        let mut waiter = Waiter::new(self.fd, libc::POLLOUT, timeout);
        let mut sent = 0;
        while sent < self.out_used {
            match FdWriter(self.fd).write(&self.outbuf[sent..self.out_used]) {
                Ok(n) => {
                    sent += n;
                    waiter.progress();
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if is_would_block(&err) => waiter.wait()?,
                Err(err) => return Err(err.into()),
            }
        }
        self.out_used = 0;
        Ok(())
    }

    /// Send all of `data` (encrypted) before returning.
    pub fn send_all(&mut self, data: &[u8], timeout: Option<Duration>) -> Result<()> {
        let mut waiter = Waiter::new(self.fd, libc::POLLIN, timeout);
        loop {
            // Whatever comes first (records to send, plaintext to keep) is settled, then `data` goes.
            match self.step(&mut waiter, timeout, &mut [], data)? {
                Step::Ready => return Ok(()),
                Step::Plaintext(_) => {}
                Step::Closed => return Err(Error::Tls("send: the connection is closed".into())),
            }
        }
    }

    /// Copy up to `out.len()` plaintext bytes into `out`, reading the socket when none are buffered; 0 = EOF.
    fn read_some(
        &mut self,
        out: &mut [u8],
        waiter: &mut Waiter,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        loop {
            let pending = &self.plain[self.taken..];
            if !pending.is_empty() {
                let n = pending.len().min(out.len());
                out[..n].copy_from_slice(&pending[..n]);
                self.taken += n;
                return Ok(n);
            }
            if self.closed {
                return Ok(0);
            }
            match self.step(waiter, timeout, out, &[])? {
                Step::Plaintext(0) => {}
                Step::Plaintext(direct) => return Ok(direct),
                Step::Closed => return Ok(0),
                // Ready with nothing buffered: wait for the server's records.
                Step::Ready => {
                    if !self.fill(waiter)? {
                        self.closed = true;
                        return Ok(0);
                    }
                }
            }
        }
    }

    /// Receive exactly `out.len()` plaintext bytes; a peer that closes first is `ShortRead`.
    pub fn recv_exact(&mut self, out: &mut [u8], timeout: Option<Duration>) -> Result<()> {
        let mut waiter = Waiter::new(self.fd, libc::POLLIN, timeout);
        let mut filled = 0;
        while filled < out.len() {
            let n = self.read_some(&mut out[filled..], &mut waiter, timeout)?;
            if n == 0 {
                return Err(Error::ShortRead {
                    expected: out.len() as u64,
                    received: filled as u64,
                });
            }
            filled += n;
        }
        Ok(())
    }

    /// Receive exactly `count` plaintext bytes into `file_fd` at `offset` through `buf`; return their CRC-32 and,
    /// with `blake3`, their BLAKE3 digest (both computed from `buf` before each pwrite, as `recv_to_file` does).
    pub fn recv_to_file(
        &mut self,
        file_fd: RawFd,
        offset: u64,
        count: u64,
        buf: &mut [u8],
        timeout: Option<Duration>,
        blake3: bool,
    ) -> Result<(u32, Option<[u8; 32]>)> {
        if count > 0 && buf.is_empty() {
            return Err(Error::InvalidArgument("buffer must not be empty".into()));
        }
        let mut waiter = Waiter::new(self.fd, libc::POLLIN, timeout);
        let mut crc = crc32fast::Hasher::new();
        let mut strong = blake3.then(blake3::Hasher::new);
        let mut received = 0u64;
        while received < count {
            let want = (count - received).min(buf.len() as u64) as usize;
            let mut filled = 0;
            while filled < want {
                let n = self.read_some(&mut buf[filled..want], &mut waiter, timeout)?;
                if n == 0 {
                    pwrite_all(file_fd, &buf[..filled], offset + received)?;
                    return Err(Error::ShortRead {
                        expected: count,
                        received: received + filled as u64,
                    });
                }
                filled += n;
            }
            crc.update(&buf[..filled]);
            if let Some(hasher) = strong.as_mut() {
                hasher.update(&buf[..filled]);
            }
            pwrite_all(file_fd, &buf[..filled], offset + received)?;
            received += filled as u64;
        }
        self.release_drained();
        Ok((
            crc.finalize(),
            strong.map(|hasher| *hasher.finalize().as_bytes()),
        ))
    }
}

impl crate::fetch::Link for TlsStream {
    fn send_all(&mut self, data: &[u8], timeout: Option<Duration>) -> Result<()> {
        TlsStream::send_all(self, data, timeout)
    }

    fn recv_exact(&mut self, out: &mut [u8], timeout: Option<Duration>) -> Result<()> {
        TlsStream::recv_exact(self, out, timeout)
    }

    fn recv_to_file(
        &mut self,
        file_fd: RawFd,
        offset: u64,
        count: u64,
        buf: &mut [u8],
        timeout: Option<Duration>,
        blake3: bool,
    ) -> Result<(u32, Option<[u8; 32]>)> {
        TlsStream::recv_to_file(self, file_fd, offset, count, buf, timeout, blake3)
    }
}
