//! Thin, retrying wrappers over the system calls the piece paths share.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The largest count one `pwrite`/`sendfile` call accepts on Linux (MAX_RW_COUNT).
pub(crate) const MAX_RW_COUNT: usize = 0x7fff_f000;

/// Write all of `buf` at `offset`, retrying short writes and EINTR.
pub(crate) fn pwrite_all(fd: RawFd, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let len = buf.len().min(MAX_RW_COUNT);
        // SAFETY: `buf` is a live slice of at least `len` bytes for the whole call; the kernel only reads it.
        let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), len, to_off_t(offset)?) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let n = n as usize;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Read once at `offset` into `buf`, retrying EINTR; 0 means end of file.
pub(crate) fn pread_once(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let len = buf.len().min(MAX_RW_COUNT);
    loop {
        // SAFETY: `buf` is a live, exclusively borrowed slice of at least `len` bytes for the whole call.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, to_off_t(offset)?) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

pub(crate) fn to_off_t(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Waits for a socket to become ready, failing when it made no progress for `timeout`.
pub(crate) struct Waiter {
    fd: RawFd,
    events: libc::c_short,
    timeout: Option<Duration>,
    last_progress: Instant,
}

impl Waiter {
    pub(crate) fn new(fd: RawFd, events: libc::c_short, timeout: Option<Duration>) -> Self {
        Waiter {
            fd,
            events,
            timeout,
            last_progress: Instant::now(),
        }
    }

    /// Note that bytes moved, which restarts the timeout.
    pub(crate) fn progress(&mut self) {
        if self.timeout.is_some() {
            self.last_progress = Instant::now();
        }
    }

    /// Block in poll(2) until the socket is ready (or in error: the next call reports it), or the timeout ends.
    pub(crate) fn wait(&self) -> Result<()> {
        loop {
            let ms = match self.timeout {
                None => -1,
                Some(timeout) => {
                    let left = timeout.saturating_sub(self.last_progress.elapsed());
                    if left.is_zero() {
                        return Err(Error::Timeout);
                    }
                    // Round up so a sub-millisecond remainder still waits instead of spinning.
                    left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.fd,
                events: self.events,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd on the stack and nfds is 1.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err.into());
            }
            if n == 0 {
                continue;
            }
            if pfd.revents & libc::POLLNVAL != 0 {
                return Err(io::Error::from_raw_os_error(libc::EBADF).into());
            }
            return Ok(());
        }
    }
}

pub(crate) fn is_would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}
