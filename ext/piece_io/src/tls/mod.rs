//! Vortex over mutual TLS in native code (rustls with `ring`): the client (child) side in `client`, the server
//! (parent) side in `server`; here what both share: loading the PEM identity and the socket adapters.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::{Error, Result};

pub mod client;
pub mod server;

pub use client::{client_config, TlsStream};
pub use server::{server_config, TlsServerStream, Want};

pub(crate) fn tls_error(context: &str, err: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{context}: {err}"))
}

/// The cluster CA(s), this host's certificate chain and its key, from PEM bytes (client and server alike).
pub(crate) fn identity(
    ca_pem: &[u8],
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(
    RootCertStore,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
)> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|err| tls_error("caCert", err))?;
        roots.add(cert).map_err(|err| tls_error("caCert", err))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls("caCert: no certificate in the PEM data".into()));
    }
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| tls_error("cert", err))?;
    if chain.is_empty() {
        return Err(Error::Tls("cert: no certificate in the PEM data".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| tls_error("key", err))?;
    Ok((roots, chain, key))
}

/// A non-blocking `recv` of the socket as `io::Read` (WouldBlock when empty).
pub(crate) struct FdReader(pub(crate) RawFd);

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live, exclusively borrowed slice of `buf.len()` bytes for the whole call.
        let n = unsafe {
            libc::recv(
                self.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// A non-blocking `send` on the socket as `io::Write` (no SIGPIPE: a closed peer is EPIPE).
pub(crate) struct FdWriter(pub(crate) RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live slice of `buf.len()` bytes for the whole call; the kernel only reads it.
        let n = unsafe {
            libc::send(
                self.0,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Several TLS records per system call: rustls hands over up to 64 queued records at once.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: an all-zero msghdr is valid (no name, no control data); the fields set below are filled in.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // IoSlice is guaranteed ABI-compatible with iovec on Unix; the kernel only reads the slices, which live
        // for the whole call.
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
        // SAFETY: `msg` points at `msg_iovlen` valid iovecs for the whole call; no other field is set.
        let n = unsafe { libc::sendmsg(self.0, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
