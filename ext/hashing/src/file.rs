use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use crate::{Algorithm, Error, Hasher, Result};

/// Large enough to amortise the syscall, small enough to stay in L2 while it is hashed.
const READ_BUFFER_SIZE: u64 = 1 << 20;

/// Digest `length` bytes (`None`: up to the end of the file) of the open file `fd` from `offset`, using `pread` only.
pub fn file_digest_fd(
    algorithm: Algorithm,
    fd: RawFd,
    offset: i64,
    length: Option<i64>,
) -> Result<Vec<u8>> {
    let (offset, length) = check_range(offset, length)?;
    digest_range(algorithm, fd, offset, length)
}

/// Like [`file_digest_fd`] on the file at `path`, opened read-only for the duration of the call.
pub fn file_digest_path(
    algorithm: Algorithm,
    path: &Path,
    offset: i64,
    length: Option<i64>,
) -> Result<Vec<u8>> {
    let (offset, length) = check_range(offset, length)?;
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    digest_range(algorithm, file.as_raw_fd(), offset, length)
}

fn check_range(offset: i64, length: Option<i64>) -> Result<(u64, Option<u64>)> {
    let non_negative =
        |name, value: i64| u64::try_from(value).map_err(|_| Error::Negative { name, value });
    Ok((
        non_negative("offset", offset)?,
        length
            .map(|length| non_negative("length", length))
            .transpose()?,
    ))
}

fn digest_range(
    algorithm: Algorithm,
    fd: RawFd,
    offset: u64,
    length: Option<u64>,
) -> Result<Vec<u8>> {
    // fstat even when the range is empty, so a closed fd is always reported.
    let size = file_size(fd)?;
    let end = match length {
        Some(length) => offset + length,
        None => offset.max(size),
    };
    if end > size {
        return Err(Error::UnexpectedEof {
            end: size,
            wanted: end,
        });
    }
    let mut hasher = Hasher::new(algorithm);
    let mut buffer = vec![0u8; READ_BUFFER_SIZE.min(end - offset) as usize];
    let mut position = offset;
    while position < end {
        let want = (end - position).min(READ_BUFFER_SIZE) as usize;
        let read = pread(fd, &mut buffer[..want], position)?;
        if read == 0 {
            // Truncated by someone else since the fstat above.
            return Err(Error::UnexpectedEof {
                end: position,
                wanted: end,
            });
        }
        hasher.update(&buffer[..read]);
        position += read as u64;
    }
    Ok(hasher.digest())
}

fn file_size(fd: RawFd) -> io::Result<u64> {
    let mut stat = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `stat` is valid for writes of one `struct stat`; fstat touches nothing else.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it filled in the whole struct.
    let stat = unsafe { stat.assume_init() };
    Ok(stat.st_size.max(0) as u64)
}

fn pread(fd: RawFd, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    loop {
        // SAFETY: `buffer` is valid for writes of `buffer.len()` bytes and outlives the call.
        let read = unsafe { libc::pread(fd, buffer.as_mut_ptr().cast(), buffer.len(), offset) };
        if read >= 0 {
            return Ok(read as usize);
        }
        let err = io::Error::last_os_error();
        // No Python signal handlers can run here (the GIL is released), so just retry like PEP 475 does.
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    struct TempFile(PathBuf);

    impl TempFile {
        fn with(name: &str, content: &[u8]) -> Self {
            let path = std::env::temp_dir()
                .join(format!("dragonfly-hashing-{}-{name}", std::process::id()));
            File::create(&path).unwrap().write_all(content).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn content() -> Vec<u8> {
        // Spans several read buffers and ends mid-buffer.
        (0..(READ_BUFFER_SIZE as usize * 2 + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect()
    }

    fn digest(algorithm: Algorithm, data: &[u8]) -> Vec<u8> {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hasher.digest()
    }

    #[test]
    fn whole_file_and_ranges_match_in_memory_digest() {
        let data = content();
        let temp = TempFile::with("ranges", &data);
        let file = File::open(&temp.0).unwrap();
        for algorithm in Algorithm::ALL {
            assert_eq!(
                file_digest_path(algorithm, &temp.0, 0, None).unwrap(),
                digest(algorithm, &data)
            );
            for (offset, length) in [(0, 0), (7, 1), (100, 2_000_000), (1 << 20, 1 << 20)] {
                let expected = digest(algorithm, &data[offset..offset + length]);
                let got = file_digest_fd(
                    algorithm,
                    file.as_raw_fd(),
                    offset as i64,
                    Some(length as i64),
                )
                .unwrap();
                assert_eq!(got, expected, "{algorithm} {offset}+{length}");
            }
            let tail = file_digest_fd(algorithm, file.as_raw_fd(), 5, None).unwrap();
            assert_eq!(tail, digest(algorithm, &data[5..]));
        }
    }

    #[test]
    fn range_past_end_of_file_is_an_error() {
        let temp = TempFile::with("eof", b"0123456789");
        let file = File::open(&temp.0).unwrap();
        let fd = file.as_raw_fd();
        let err = file_digest_fd(Algorithm::Crc32, fd, 5, Some(6)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "file ends at byte 10, before the end of the requested range at byte 11"
        );
        assert!(matches!(
            file_digest_fd(Algorithm::Crc32, fd, 11, None),
            Err(Error::UnexpectedEof {
                end: 10,
                wanted: 11
            })
        ));
        assert!(file_digest_fd(Algorithm::Crc32, fd, 10, None).is_ok());
    }

    #[test]
    fn negative_arguments_are_rejected_before_any_io() {
        let err = file_digest_fd(Algorithm::Sha256, -1, -1, None).unwrap_err();
        assert_eq!(err.to_string(), "offset must be >= 0, got -1");
        let err = file_digest_path(Algorithm::Sha256, Path::new("/nonexistent"), 0, Some(-5))
            .unwrap_err();
        assert_eq!(err.to_string(), "length must be >= 0, got -5");
    }

    #[test]
    fn bad_fd_and_missing_path_are_os_errors() {
        match file_digest_fd(Algorithm::Sha256, -1, 0, Some(0)) {
            Err(Error::Io(err)) => assert_eq!(err.raw_os_error(), Some(libc::EBADF)),
            other => panic!("expected EBADF, got {other:?}"),
        }
        match file_digest_path(Algorithm::Sha256, Path::new("/nonexistent/x"), 0, None) {
            Err(Error::Open { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT))
            }
            other => panic!("expected ENOENT, got {other:?}"),
        }
    }
}
