//! One piece from a parent in one call: the request out, the answer's header and metadata in and checked against
//! the piece asked for, then the piece bytes into the file (CRC-32, and BLAKE3 when asked, computed on the way).
//!
//! A child's download thread used to make four calls per piece (the request, the header, the metadata, the bytes),
//! each giving the GIL back and taking it again with the event loop and seven other threads wanting it
//! (bench/RESULTS.md §2 "loopround": 47 futex calls per piece). Here the thread takes it once. The exchange runs
//! over a plaintext socket ([`PlainLink`]) or the native TLS stream ([`crate::tls::TlsStream`]) alike.

use std::io::{self, Write};
use std::os::fd::RawFd;
use std::time::Duration;

use crate::sys::{is_would_block, Waiter};
use crate::tls::FdWriter;
use crate::vortex::{self, HEADER_SIZE, TAG_ERROR};
use crate::{recv_to_file, recv_to_file_blake3, Error, Result};

/// A connection a piece can be fetched over.
pub trait Link {
    /// Send all of `data` before returning.
    fn send_all(&mut self, data: &[u8], timeout: Option<Duration>) -> Result<()>;
    /// Receive exactly `out.len()` bytes; a peer that closes first is `ShortRead`.
    fn recv_exact(&mut self, out: &mut [u8], timeout: Option<Duration>) -> Result<()>;
    /// Receive exactly `count` bytes into `file_fd` at `offset` through `buf`; return their CRC-32 and, with
    /// `blake3`, their BLAKE3 digest.
    fn recv_to_file(
        &mut self,
        file_fd: RawFd,
        offset: u64,
        count: u64,
        buf: &mut [u8],
        timeout: Option<Duration>,
        blake3: bool,
    ) -> Result<(u32, Option<[u8; 32]>)>;
}

/// A connected plaintext socket (blocking or not: every wait is a poll(2) bounded by the timeout).
pub struct PlainLink(pub RawFd);

impl Link for PlainLink {
    fn send_all(&mut self, data: &[u8], timeout: Option<Duration>) -> Result<()> {
        let mut waiter = Waiter::new(self.0, libc::POLLOUT, timeout);
        let mut sent = 0;
        while sent < data.len() {
            match FdWriter(self.0).write(&data[sent..]) {
                Ok(n) => {
                    sent += n;
                    waiter.progress();
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if is_would_block(&err) => waiter.wait()?,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    fn recv_exact(&mut self, out: &mut [u8], timeout: Option<Duration>) -> Result<()> {
        let mut waiter = Waiter::new(self.0, libc::POLLIN, timeout);
        let mut filled = 0;
        while filled < out.len() {
            let chunk = &mut out[filled..];
            // SAFETY: `chunk` is a live, exclusively borrowed slice of `chunk.len()` bytes for the whole call.
            let n = unsafe {
                libc::recv(
                    self.0,
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                filled += n as usize;
                waiter.progress();
            } else if n == 0 {
                return Err(Error::ShortRead {
                    expected: out.len() as u64,
                    received: filled as u64,
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
        Ok(())
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
        if blake3 {
            let (crc, digest) = recv_to_file_blake3(self.0, file_fd, offset, count, buf, timeout)?;
            Ok((crc, Some(digest)))
        } else {
            Ok((
                recv_to_file(self.0, file_fd, offset, count, buf, timeout)?,
                None,
            ))
        }
    }
}

/// The piece asked for: its request's tag (the answer must carry the content tag that follows it), task, number,
/// and where the bytes go in the task's file.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub tag: u8,
    pub task_id: &'a str,
    pub number: u32,
    pub offset: u64,
    pub length: u64,
}

/// What the parent announced for the piece (its digest) and what arrived (CRC-32, BLAKE3 when asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub digest: String,
    pub crc: u32,
    pub blake3: Option<[u8; 32]>,
}

/// Why a fetch failed, and whether it failed before any byte of the answer arrived on a connection the parent
/// may have closed while it idled in the pool (`stale`): the caller then asks again on a fresh connection.
#[derive(Debug)]
pub struct FetchError {
    pub error: Error,
    pub stale: bool,
}

impl From<Error> for FetchError {
    fn from(error: Error) -> Self {
        FetchError {
            error,
            stale: false,
        }
    }
}

/// A failure of the request or of the answer's first read that a closed idle connection explains: the end of the
/// stream before any answer byte, a reset, a broken pipe.
fn closed_before_answer(error: Error) -> FetchError {
    let stale = match &error {
        Error::ShortRead { received, .. } => *received == 0,
        Error::Io(err) => matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        _ => false,
    };
    FetchError { error, stale }
}

/// Fetch one piece over `link` into `file_fd` at `wanted.offset` through `buf` (see the module's doc).
///
/// The answer is refused, with the messages of the Python path it replaces, when its header is malformed
/// (`vortex::decode_header`), when it is an error frame (`Error::Remote`), when it is not the content frame of the
/// request's tag, when its metadata is malformed, or when the metadata names another piece number, offset or
/// length; a stream that ends inside the piece is `ShortRead`.
pub fn fetch_piece<L: Link>(
    link: &mut L,
    wanted: &Wanted<'_>,
    file_fd: RawFd,
    buf: &mut [u8],
    timeout: Option<Duration>,
    blake3: bool,
) -> std::result::Result<Fetched, FetchError> {
    if wanted.length > 0 && buf.is_empty() {
        return Err(Error::InvalidArgument("buffer must not be empty".into()).into());
    }
    let request = vortex::encode_download_piece(wanted.task_id, wanted.number, 0, wanted.tag)?;
    link.send_all(&request, timeout)
        .map_err(closed_before_answer)?;
    let mut header = [0u8; HEADER_SIZE];
    link.recv_exact(&mut header, timeout)
        .map_err(closed_before_answer)?;
    let (_frame_id, tag, value_length) = vortex::decode_header(&header)?;
    // decode_header bounds every value by MAX_VALUE_LENGTH.
    let mut value = vec![0u8; value_length as usize];
    link.recv_exact(&mut value, timeout)?;
    if tag == TAG_ERROR {
        let (code, message) = vortex::decode_error(&value)?;
        return Err(Error::Remote { code, message }.into());
    }
    if tag != wanted.tag + 1 {
        return Err(Error::Vortex(format!("expected a piece content frame, got tag {tag}")).into());
    }
    let meta = vortex::decode_piece_content(&value)?;
    if meta.number != wanted.number || meta.offset != wanted.offset || meta.length != wanted.length
    {
        return Err(Error::Vortex(format!(
            "parent sent piece {} at {}+{}, expected piece {} at {}+{}",
            meta.number, meta.offset, meta.length, wanted.number, wanted.offset, wanted.length
        ))
        .into());
    }
    let (crc, strong) =
        link.recv_to_file(file_fd, wanted.offset, wanted.length, buf, timeout, blake3)?;
    Ok(Fetched {
        digest: meta.digest,
        crc,
        blake3: strong,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vortex::{encode_error, encode_piece_content, PieceMetadata, TAG_PIECE_CONTENT};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    const TASK: &str = "4a0d59b2b8b2a3f4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";
    const LENGTH: u64 = 300_000;
    const OFFSET: u64 = 3 * LENGTH;

    fn wanted() -> Wanted<'static> {
        Wanted {
            tag: vortex::TAG_DOWNLOAD_PIECE,
            task_id: TASK,
            number: 3,
            offset: OFFSET,
            length: LENGTH,
        }
    }

    fn frame(number: u32, payload: &[u8]) -> Vec<u8> {
        let meta = PieceMetadata {
            number,
            offset: OFFSET,
            length: LENGTH,
            digest: format!("crc32:{}", crc32fast::hash(payload)),
            parent_id: "parent".into(),
            traffic_type: 0,
            cost_secs: 0,
            created_at: 0,
        };
        let mut answer = encode_piece_content(&meta, 0, TAG_PIECE_CONTENT).unwrap();
        answer.extend_from_slice(payload);
        answer
    }

    /// A parent that reads one request, sends `answer` and closes; the request it read comes back from the join.
    fn parent(answer: Vec<u8>) -> (TcpStream, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let thread = std::thread::spawn(move || {
            let mut request = vec![0u8; HEADER_SIZE + vortex::DOWNLOAD_PIECE_LENGTH];
            server.read_exact(&mut request).unwrap();
            // A refused answer is not read to its end: the child closes and this write may fail.
            let _ = server.write_all(&answer);
            request
        });
        (client, thread)
    }

    fn fetch(answer: Vec<u8>) -> (std::result::Result<Fetched, FetchError>, Vec<u8>) {
        let (client, thread) = parent(answer);
        let file = tempfile();
        let mut buf = vec![0u8; 70_000];
        let result = fetch_piece(
            &mut PlainLink(client.as_raw_fd()),
            &wanted(),
            file.as_raw_fd(),
            &mut buf,
            Some(Duration::from_secs(10)),
            true,
        );
        drop(client);
        let request = thread.join().unwrap();
        assert_eq!(
            request,
            vortex::encode_download_piece(TASK, 3, 0, vortex::TAG_DOWNLOAD_PIECE).unwrap()
        );
        let mut written = Vec::new();
        (&file).read_to_end(&mut written).unwrap();
        (result, written)
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "piece-io-fetch-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(path).unwrap();
        file
    }

    fn vortex_message(result: std::result::Result<Fetched, FetchError>) -> String {
        match result {
            Err(FetchError {
                error: Error::Vortex(message),
                stale: false,
            }) => message,
            other => panic!("expected a Vortex error, got {other:?}"),
        }
    }

    #[test]
    fn the_piece_lands_at_its_offset_with_its_digests() {
        let payload: Vec<u8> = (0..LENGTH as u32).map(|i| (i % 249) as u8).collect();
        let (result, written) = fetch(frame(3, &payload));
        let got = result.unwrap();
        assert_eq!(got.digest, format!("crc32:{}", crc32fast::hash(&payload)));
        assert_eq!(got.crc, crc32fast::hash(&payload));
        assert_eq!(got.blake3, Some(*blake3::hash(&payload).as_bytes()));
        assert_eq!(&written[OFFSET as usize..], &payload[..]);
    }

    #[test]
    fn another_piece_is_refused_before_its_bytes_are_written() {
        let (result, written) = fetch(frame(4, &[7u8; LENGTH as usize]));
        assert_eq!(
            vortex_message(result),
            format!(
                "parent sent piece 4 at {OFFSET}+{LENGTH}, expected piece 3 at {OFFSET}+{LENGTH}"
            )
        );
        assert!(written.is_empty());
    }

    #[test]
    fn an_error_frame_is_the_parents_error() {
        let (result, _) = fetch(encode_error(2, "piece 3 not found", 0).unwrap());
        match result {
            Err(FetchError {
                error: Error::Remote { code: 2, message },
                stale: false,
            }) => assert_eq!(message, "piece 3 not found"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn another_tag_is_refused() {
        let (result, _) = fetch(vortex::encode_close(0));
        assert_eq!(
            vortex_message(result),
            "expected a piece content frame, got tag 254"
        );
    }

    #[test]
    fn a_closed_connection_is_stale_only_before_the_answer() {
        let (result, _) = fetch(Vec::new());
        match result {
            Err(FetchError {
                error:
                    Error::ShortRead {
                        expected: 6,
                        received: 0,
                    },
                stale: true,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        let (result, _) = fetch(frame(3, &[1, 2, 3]));
        match result {
            Err(FetchError {
                error:
                    Error::ShortRead {
                        expected: LENGTH,
                        received: 3,
                    },
                stale: false,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
