//! Receive exactly N bytes from a socket into a file, computing CRC-32 on the way.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::sys::{is_would_block, pwrite_all, Waiter};
use crate::{Error, Result};

/// Receive exactly `count` bytes from `sock_fd` and write them to `file_fd` at `offset` through `buf`; return
/// their CRC-32.
///
/// Each recv uses MSG_DONTWAIT and waits in poll(2), so the timeout holds for blocking sockets too. The buffer is
/// filled before each pwrite to keep writes large. A peer that closes early is `ShortRead`.
pub fn recv_to_file(
    sock_fd: RawFd,
    file_fd: RawFd,
    offset: u64,
    count: u64,
    buf: &mut [u8],
    timeout: Option<Duration>,
) -> Result<u32> {
    recv_observed(sock_fd, file_fd, offset, count, buf, timeout, |_| {})
}

/// `recv_to_file` that also returns the BLAKE3 digest of the bytes, hashed from the buffer before each pwrite.
///
/// A child verifies every piece from a parent against a trusted BLAKE3 digest; hashing here, while the bytes are
/// still in the CPU cache, spares reading the piece back from the file afterwards.
pub fn recv_to_file_blake3(
    sock_fd: RawFd,
    file_fd: RawFd,
    offset: u64,
    count: u64,
    buf: &mut [u8],
    timeout: Option<Duration>,
) -> Result<(u32, [u8; 32])> {
    let mut hasher = blake3::Hasher::new();
    let crc = recv_observed(sock_fd, file_fd, offset, count, buf, timeout, |filled| {
        hasher.update(filled);
    })?;
    Ok((crc, *hasher.finalize().as_bytes()))
}

/// The receive loop: `observe` sees each filled buffer, in order, just before it is written.
fn recv_observed(
    sock_fd: RawFd,
    file_fd: RawFd,
    offset: u64,
    count: u64,
    buf: &mut [u8],
    timeout: Option<Duration>,
    mut observe: impl FnMut(&[u8]),
) -> Result<u32> {
    if count > 0 && buf.is_empty() {
        return Err(Error::InvalidArgument("buffer must not be empty".into()));
    }
    let mut waiter = Waiter::new(sock_fd, libc::POLLIN, timeout);
    let mut hasher = crc32fast::Hasher::new();
    let mut received = 0u64;
    while received < count {
        let want = (count - received).min(buf.len() as u64) as usize;
        let mut filled = 0;
        while filled < want {
            let chunk = &mut buf[filled..want];
            // SAFETY: `chunk` is a live, exclusively borrowed slice of `chunk.len()` bytes for the whole call.
            let n = unsafe {
                libc::recv(
                    sock_fd,
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                let n = n as usize;
                hasher.update(&chunk[..n]);
                filled += n;
                waiter.progress();
            } else if n == 0 {
                // Keep what did arrive: the caller may inspect it, and the piece is not recorded anyway.
                pwrite_all(file_fd, &buf[..filled], offset + received)?;
                return Err(Error::ShortRead {
                    expected: count,
                    received: received + filled as u64,
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
        observe(&buf[..filled]);
        pwrite_all(file_fd, &buf[..filled], offset + received)?;
        received += filled as u64;
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sendfile;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn temp_file(name: &str, data: &[u8]) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("piece-io-{}-{name}", std::process::id()));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all(data).unwrap();
        (path, file)
    }

    #[test]
    fn sendfile_then_recv_to_file_roundtrip() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let (src_path, src) = temp_file("send-src", &data);
        let (dst_path, dst) = temp_file("send-dst", b"");
        let (client, server) = pair();
        client.set_nonblocking(true).unwrap();
        let sender = std::thread::spawn(move || {
            let sent = sendfile(
                client.as_raw_fd(),
                src.as_raw_fd(),
                1000,
                2_000_000,
                Some(Duration::from_secs(10)),
            );
            (sent.unwrap(), client)
        });
        let mut buf = vec![0u8; 65536];
        let crc = recv_to_file(
            server.as_raw_fd(),
            dst.as_raw_fd(),
            7,
            2_000_000,
            &mut buf,
            None,
        )
        .unwrap();
        let (sent, _client) = sender.join().unwrap();
        assert_eq!(sent, 2_000_000);
        assert_eq!(crc, crc32fast::hash(&data[1000..2_001_000]));
        let mut written = Vec::new();
        File::open(&dst_path)
            .unwrap()
            .read_to_end(&mut written)
            .unwrap();
        assert_eq!(&written[7..], &data[1000..2_001_000]);
        std::fs::remove_file(src_path).unwrap();
        std::fs::remove_file(dst_path).unwrap();
    }

    #[test]
    fn recv_to_file_blake3_hashes_what_it_writes() {
        let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
        let (dst_path, dst) = temp_file("blake3-dst", b"");
        let (mut client, server) = pair();
        let payload = data.clone();
        let sender = std::thread::spawn(move || client.write_all(&payload).unwrap());
        // A buffer that does not divide the length: the last fill is short.
        let mut buf = vec![0u8; 70_000];
        let (crc, digest) = recv_to_file_blake3(
            server.as_raw_fd(),
            dst.as_raw_fd(),
            3,
            data.len() as u64,
            &mut buf,
            Some(Duration::from_secs(10)),
        )
        .unwrap();
        sender.join().unwrap();
        assert_eq!(crc, crc32fast::hash(&data));
        assert_eq!(digest, *blake3::hash(&data).as_bytes());
        let mut written = Vec::new();
        File::open(&dst_path)
            .unwrap()
            .read_to_end(&mut written)
            .unwrap();
        assert_eq!(&written[3..], &data[..]);
        std::fs::remove_file(dst_path).unwrap();
    }

    #[test]
    fn peer_closing_early_is_short_read() {
        let (dst_path, dst) = temp_file("short", b"");
        let (mut client, server) = pair();
        client.write_all(b"0123456789").unwrap();
        drop(client);
        let mut buf = [0u8; 4];
        match recv_to_file(
            server.as_raw_fd(),
            dst.as_raw_fd(),
            0,
            20,
            &mut buf,
            Some(Duration::from_secs(5)),
        ) {
            Err(Error::ShortRead {
                expected: 20,
                received: 10,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        std::fs::remove_file(dst_path).unwrap();
    }

    #[test]
    fn silent_peer_times_out() {
        let (dst_path, dst) = temp_file("timeout", b"");
        let (_client, server) = pair();
        let mut buf = [0u8; 4];
        let started = std::time::Instant::now();
        let result = recv_to_file(
            server.as_raw_fd(),
            dst.as_raw_fd(),
            0,
            1,
            &mut buf,
            Some(Duration::from_millis(100)),
        );
        assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
        assert!(started.elapsed() >= Duration::from_millis(100));
        std::fs::remove_file(dst_path).unwrap();
    }

    #[test]
    fn sendfile_past_eof_is_eof() {
        let (src_path, src) = temp_file("eof-src", b"abcdef");
        let (client, _server) = pair();
        match sendfile(client.as_raw_fd(), src.as_raw_fd(), 2, 10, None) {
            Err(Error::Eof {
                expected: 10,
                sent: 4,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        std::fs::remove_file(src_path).unwrap();
    }
}
