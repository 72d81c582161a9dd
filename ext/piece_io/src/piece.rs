//! Positional piece writes (with CRC-32 in the same pass) and reads.

use std::os::fd::RawFd;

use crate::sys::{pread_once, pwrite_all};
use crate::Result;

/// Hash and write in slices this size so the CRC reads bytes the write is about to touch while they are in cache.
const WRITE_CHUNK: usize = 256 * 1024;

/// Write all of `data` at `offset` and return its CRC-32 (IEEE, as `zlib.crc32`).
pub fn write_piece(fd: RawFd, offset: u64, data: &[u8]) -> Result<u32> {
    let mut hasher = crc32fast::Hasher::new();
    let mut at = offset;
    for chunk in data.chunks(WRITE_CHUNK) {
        hasher.update(chunk);
        pwrite_all(fd, chunk, at)?;
        at += chunk.len() as u64;
    }
    Ok(hasher.finalize())
}

/// Read at `offset` until `buf` is full or the file ends; return the count read.
pub fn read_piece(fd: RawFd, offset: u64, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = pread_once(fd, &mut buf[filled..], offset + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn temp_file(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("piece-io-{}-{name}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    #[test]
    fn write_then_read_roundtrip_with_crc() {
        let (path, file) = temp_file("roundtrip");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let crc = write_piece(file.as_raw_fd(), 4096, &data).unwrap();
        assert_eq!(crc, crc32fast::hash(&data));
        let mut buf = vec![0u8; data.len()];
        assert_eq!(
            read_piece(file.as_raw_fd(), 4096, &mut buf).unwrap(),
            data.len()
        );
        assert_eq!(buf, data);
        let mut whole = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut whole).unwrap();
        assert_eq!(&whole[..4096], &[0u8; 4096][..]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn read_past_eof_returns_short_count() {
        let (path, file) = temp_file("eof");
        write_piece(file.as_raw_fd(), 0, b"hello").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(read_piece(file.as_raw_fd(), 2, &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"llo");
        assert_eq!(read_piece(file.as_raw_fd(), 100, &mut buf).unwrap(), 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn empty_write_has_crc_zero() {
        let (path, file) = temp_file("empty");
        assert_eq!(write_piece(file.as_raw_fd(), 0, b"").unwrap(), 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_fd_is_ebadf() {
        match write_piece(-1, 0, b"x") {
            Err(crate::Error::Io(err)) => assert_eq!(err.raw_os_error(), Some(libc::EBADF)),
            other => panic!("unexpected {other:?}"),
        }
    }
}
