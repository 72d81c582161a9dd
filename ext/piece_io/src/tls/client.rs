//! Vortex over mutual TLS in native code, the client (child) side: the handshake, the request and the piece bytes
//! go through rustls on a caller-owned socket, with the CRC-32 and BLAKE3 of the piece computed on the way.
//!
//! Python's `ssl` hands out one TLS record (16 KiB) per `recv_into`, so a piece costs a Python call, two `read`
//! system calls and often a `poll` per record (bench/RESULTS.md §2). Here ciphertext is read up to `READ_CHUNK`
//! bytes per system call and the whole piece is received in one native call. The rules are those of
//! `dragonfly.common.tls.client_ssl_context`: TLS 1.2 or 1.3, the server's chain must lead to the cluster CA and
//! its certificate must name the IP it was dialled at (an IP SAN), and this host's certificate is presented.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

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

/// One TLS client connection over a connected socket the caller owns (and keeps open while this lives).
pub struct TlsStream {
    conn: ClientConnection,
    fd: RawFd,
    /// Ciphertext read from the socket and not yet taken by rustls: `inbuf[start..end]`. Allocated for a read
    /// and dropped once drained after a piece, so an idle pooled connection does not hold READ_CHUNK bytes.
    inbuf: Vec<u8>,
    start: usize,
    end: usize,
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
        let conn = ClientConnection::new(config, ServerName::IpAddress(ip.into()))
            .map_err(|err| tls_error("handshake", err))?;
        let mut stream = TlsStream {
            conn,
            fd,
            inbuf: Vec::new(),
            start: 0,
            end: 0,
        };
        let mut waiter = Waiter::new(fd, libc::POLLIN, timeout);
        while stream.conn.is_handshaking() {
            stream.flush(timeout)?;
            if stream.conn.is_handshaking() && !stream.feed(&mut waiter)? {
                return Err(Error::Tls(
                    "handshake: the server closed the connection".into(),
                ));
            }
        }
        stream.flush(timeout)?;
        stream.release_drained();
        Ok(stream)
    }

    /// Drop the read buffer when it holds nothing (see `inbuf`).
    fn release_drained(&mut self) {
        if self.start == self.end {
            self.inbuf = Vec::new();
            (self.start, self.end) = (0, 0);
        }
    }

    /// Send all of `data` (encrypted) before returning.
    pub fn send_all(&mut self, mut data: &[u8], timeout: Option<Duration>) -> Result<()> {
        while !data.is_empty() {
            // rustls takes what fits its outgoing buffer (64 KiB); the rest after a flush.
            let n = self.conn.writer().write(data)?;
            if n == 0 && !self.conn.wants_write() {
                return Err(Error::Tls("send: the connection takes no more data".into()));
            }
            data = &data[n..];
            self.flush(timeout)?;
        }
        Ok(())
    }

    /// Write every pending TLS record to the socket.
    fn flush(&mut self, timeout: Option<Duration>) -> Result<()> {
        let mut waiter = Waiter::new(self.fd, libc::POLLOUT, timeout);
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut FdWriter(self.fd)) {
                Ok(_) => waiter.progress(),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if is_would_block(&err) => waiter.wait()?,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Give rustls more ciphertext (what is buffered, else one `recv` of up to READ_CHUNK bytes) and process it,
    /// stopping once plaintext is available; Ok(false) when the peer closed the connection.
    fn feed(&mut self, waiter: &mut Waiter) -> Result<bool> {
        if self.start == self.end {
            if self.inbuf.is_empty() {
                self.inbuf = vec![0; READ_CHUNK];
            }
            let mut reader = FdReader(self.fd);
            loop {
                match reader.read(&mut self.inbuf) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        (self.start, self.end) = (0, n);
                        waiter.progress();
                        break;
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) if is_would_block(&err) => waiter.wait()?,
                    Err(err) => return Err(err.into()),
                }
            }
        }
        while self.start < self.end {
            let mut pending = &self.inbuf[self.start..self.end];
            let taken = self.conn.read_tls(&mut pending)?;
            self.start += taken;
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(err) => {
                    // Tell the server why (an alert is queued); the error is what the caller sees.
                    let _ = self.flush(Some(Duration::from_secs(1)));
                    return Err(tls_error("connection", err));
                }
            };
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() || taken == 0 {
                break;
            }
        }
        Ok(true)
    }

    /// Copy up to `out.len()` plaintext bytes into `out`, reading the socket when none are buffered; 0 = EOF.
    fn read_some(&mut self, out: &mut [u8], waiter: &mut Waiter) -> Result<usize> {
        loop {
            match self.conn.reader().read(out) {
                Ok(n) => return Ok(n),
                Err(err) if is_would_block(&err) => {}
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(err) => return Err(err.into()),
            }
            if !self.feed(waiter)? {
                return Ok(0);
            }
        }
    }

    /// Receive exactly `out.len()` plaintext bytes; a peer that closes first is `ShortRead`.
    pub fn recv_exact(&mut self, out: &mut [u8], timeout: Option<Duration>) -> Result<()> {
        let mut waiter = Waiter::new(self.fd, libc::POLLIN, timeout);
        let mut filled = 0;
        while filled < out.len() {
            let n = self.read_some(&mut out[filled..], &mut waiter)?;
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
                let n = self.read_some(&mut buf[filled..want], &mut waiter)?;
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
