//! `sendfile(2)` of a file range to a connected socket.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::sys::{is_would_block, to_off_t, Waiter, MAX_RW_COUNT};
use crate::{Error, Result};

/// Send exactly `count` bytes of `file_fd` from `offset` to `sock_fd`; return `count`.
///
/// A non-blocking socket waits in poll(2), failing with `Timeout` after `timeout` without progress; a blocking
/// socket blocks in the kernel, which knows no timeout. A file shorter than the range is `Eof`.
pub fn sendfile(
    sock_fd: RawFd,
    file_fd: RawFd,
    offset: u64,
    count: u64,
    timeout: Option<Duration>,
) -> Result<u64> {
    let mut waiter = Waiter::new(sock_fd, libc::POLLOUT, timeout);
    let mut off = to_off_t(offset)?;
    let mut sent = 0u64;
    while sent < count {
        let len = (count - sent).min(MAX_RW_COUNT as u64) as usize;
        // SAFETY: `off` is a live off_t the kernel advances by the bytes sent; no memory of ours is read.
        let n = unsafe { libc::sendfile(sock_fd, file_fd, &mut off, len) };
        if n > 0 {
            sent += n as u64;
            waiter.progress();
        } else if n == 0 {
            return Err(Error::Eof {
                expected: count,
                sent,
            });
        } else {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if !is_would_block(&err) {
                return Err(err.into());
            }
            waiter.wait()?;
        }
    }
    Ok(sent)
}
