//! The Vortex frame codec (Dragonfly's peer-to-peer piece protocol, vortex-protocol 0.1.5).
//!
//! A frame is a 6-byte big-endian header `id:u8 tag:u8 length:u32` and a value of `length` bytes. For piece
//! content the value holds only `metadata_len:u32` and the metadata; the piece bytes follow unframed.
//!
//! Decoding is strict: every length is checked against what remains, nothing may trail, text must be UTF-8, and
//! values are bounded by [`MAX_VALUE_LENGTH`], so a hostile peer can neither make us allocate much nor read past
//! a value. Error messages name the field and are shared word for word with the Python twin.

use crate::{Error, Result};

pub const HEADER_SIZE: usize = 6;

/// Upper bound of a frame value. Values carry only control data (a request is 68 bytes, piece metadata is 45
/// bytes plus a digest and a peer id, an error is a code and a message); piece bytes are never framed, so 64 KiB
/// leaves ample room while capping what a peer can make us buffer.
pub const MAX_VALUE_LENGTH: usize = 64 * 1024;

pub const TAG_DOWNLOAD_PIECE: u8 = 0;
pub const TAG_PIECE_CONTENT: u8 = 1;
pub const TAG_DOWNLOAD_PERSISTENT_PIECE: u8 = 2;
pub const TAG_PERSISTENT_PIECE_CONTENT: u8 = 3;
pub const TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE: u8 = 4;
pub const TAG_PERSISTENT_CACHE_PIECE_CONTENT: u8 = 5;
pub const TAG_DOWNLOAD_CACHE_PIECE: u8 = 6;
pub const TAG_CACHE_PIECE_CONTENT: u8 = 7;
pub const TAG_CLOSE: u8 = 254;
pub const TAG_ERROR: u8 = 255;

pub const TASK_ID_LENGTH: usize = 64;
/// A request value: the task id and `piece_number:u32`.
pub const DOWNLOAD_PIECE_LENGTH: usize = TASK_ID_LENGTH + 4;
/// Metadata with an empty digest and parent id.
pub const MIN_METADATA_LENGTH: usize = 4 + 8 + 8 + 4 + 4 + 1 + 8 + 8;

fn is_download_tag(tag: u8) -> bool {
    tag <= TAG_CACHE_PIECE_CONTENT && tag % 2 == 0
}

fn is_content_tag(tag: u8) -> bool {
    tag <= TAG_CACHE_PIECE_CONTENT && tag % 2 == 1
}

fn fail<T>(message: String) -> Result<T> {
    Err(Error::Vortex(message))
}

/// The metadata of one piece, as a PieceContent frame carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PieceMetadata {
    pub number: u32,
    pub offset: u64,
    pub length: u64,
    pub digest: String,
    pub parent_id: String,
    pub traffic_type: u8,
    pub cost_secs: u64,
    pub created_at: i64,
}

fn header(frame_id: u8, tag: u8, length: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_SIZE + length);
    frame.push(frame_id);
    frame.push(tag);
    frame.extend_from_slice(&(length as u32).to_be_bytes());
    frame
}

fn check_value_length(length: usize) -> Result<()> {
    if length > MAX_VALUE_LENGTH {
        return fail(format!(
            "value length {length} exceeds MAX_VALUE_LENGTH {MAX_VALUE_LENGTH}"
        ));
    }
    Ok(())
}

fn check_task_id(task_id: &str) -> Result<()> {
    let valid = task_id.len() == TASK_ID_LENGTH
        && task_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return fail(format!(
            "task_id must be {TASK_ID_LENGTH} lowercase hex characters"
        ));
    }
    Ok(())
}

/// Decode a header into `(frame_id, tag, length)`, checking the tag and that the length suits it.
pub fn decode_header(buf: &[u8]) -> Result<(u8, u8, u32)> {
    if buf.len() != HEADER_SIZE {
        return fail(format!(
            "header must be {HEADER_SIZE} bytes, got {}",
            buf.len()
        ));
    }
    let (frame_id, tag) = (buf[0], buf[1]);
    let length = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
    let len = length as usize;
    let fits = if is_download_tag(tag) {
        len == DOWNLOAD_PIECE_LENGTH
    } else if is_content_tag(tag) {
        (4 + MIN_METADATA_LENGTH..=MAX_VALUE_LENGTH).contains(&len)
    } else if tag == TAG_CLOSE {
        len == 0
    } else if tag == TAG_ERROR {
        (1..=MAX_VALUE_LENGTH).contains(&len)
    } else {
        return fail(format!("unknown tag {tag}"));
    };
    if !fits {
        check_value_length(len)?;
        return fail(format!("value length {length} is invalid for tag {tag}"));
    }
    Ok((frame_id, tag, length))
}

/// Encode a request frame for one piece.
pub fn encode_download_piece(
    task_id: &str,
    piece_number: u32,
    frame_id: u8,
    tag: u8,
) -> Result<Vec<u8>> {
    if !is_download_tag(tag) {
        return fail(format!("tag {tag} is not a download piece tag"));
    }
    check_task_id(task_id)?;
    let mut frame = header(frame_id, tag, DOWNLOAD_PIECE_LENGTH);
    frame.extend_from_slice(task_id.as_bytes());
    frame.extend_from_slice(&piece_number.to_be_bytes());
    Ok(frame)
}

/// Decode a request value into `(task_id, piece_number)`.
pub fn decode_download_piece(value: &[u8]) -> Result<(String, u32)> {
    if value.len() != DOWNLOAD_PIECE_LENGTH {
        return fail(format!(
            "download piece value must be {DOWNLOAD_PIECE_LENGTH} bytes, got {}",
            value.len()
        ));
    }
    let (task_id, number) = value.split_at(TASK_ID_LENGTH);
    // Checking bytes before conversion keeps non-UTF-8 input on the same message as non-hex input.
    let task_id = match std::str::from_utf8(task_id) {
        Ok(text) => text,
        Err(_) => {
            return fail(format!(
                "task_id must be {TASK_ID_LENGTH} lowercase hex characters"
            ))
        }
    };
    check_task_id(task_id)?;
    Ok((
        task_id.to_owned(),
        u32::from_be_bytes([number[0], number[1], number[2], number[3]]),
    ))
}

/// Encode the header and value of a piece content frame (the piece bytes are sent after it).
pub fn encode_piece_content(meta: &PieceMetadata, frame_id: u8, tag: u8) -> Result<Vec<u8>> {
    if !is_content_tag(tag) {
        return fail(format!("tag {tag} is not a piece content tag"));
    }
    let metadata_len = MIN_METADATA_LENGTH + meta.digest.len() + meta.parent_id.len();
    check_value_length(4 + metadata_len)?;
    let mut frame = header(frame_id, tag, 4 + metadata_len);
    frame.extend_from_slice(&(metadata_len as u32).to_be_bytes());
    frame.extend_from_slice(&meta.number.to_be_bytes());
    frame.extend_from_slice(&meta.offset.to_be_bytes());
    frame.extend_from_slice(&meta.length.to_be_bytes());
    frame.extend_from_slice(&(meta.digest.len() as u32).to_be_bytes());
    frame.extend_from_slice(meta.digest.as_bytes());
    frame.extend_from_slice(&(meta.parent_id.len() as u32).to_be_bytes());
    frame.extend_from_slice(meta.parent_id.as_bytes());
    frame.push(meta.traffic_type);
    frame.extend_from_slice(&meta.cost_secs.to_be_bytes());
    frame.extend_from_slice(&meta.created_at.to_be_bytes());
    Ok(frame)
}

/// Reads big-endian fields off a value, naming the field when it runs out.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &str, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return fail(format!(
                "truncated {field}: need {n} bytes, {} left",
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &str) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn text(&mut self, field: &str, n: usize) -> Result<String> {
        match std::str::from_utf8(self.take(field, n)?) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => fail(format!("{field} is not valid UTF-8")),
        }
    }

    fn finish(&self, last_field: &str) -> Result<()> {
        if !self.buf.is_empty() {
            return fail(format!(
                "{} trailing bytes after {last_field}",
                self.buf.len()
            ));
        }
        Ok(())
    }
}

/// Decode a piece content value (`metadata_len:u32` + metadata) into its metadata.
pub fn decode_piece_content(value: &[u8]) -> Result<PieceMetadata> {
    check_value_length(value.len())?;
    let mut r = Reader { buf: value };
    let metadata_len = r.u32("metadata_len")? as usize;
    if metadata_len != r.buf.len() {
        return fail(format!(
            "metadata_len {metadata_len} does not match the {} bytes that follow",
            r.buf.len()
        ));
    }
    let number = r.u32("number")?;
    let offset = r.u64("offset")?;
    let length = r.u64("length")?;
    let digest_len = r.u32("digest_len")? as usize;
    let digest = r.text("digest", digest_len)?;
    let parent_id_len = r.u32("parent_id_len")? as usize;
    let parent_id = r.text("parent_id", parent_id_len)?;
    let traffic_type = r.u8("traffic_type")?;
    let cost_secs = r.u64("cost_secs")?;
    let created_at = r.i64("created_at")?;
    r.finish("created_at")?;
    Ok(PieceMetadata {
        number,
        offset,
        length,
        digest,
        parent_id,
        traffic_type,
        cost_secs,
        created_at,
    })
}

/// Encode an error frame.
pub fn encode_error(code: u8, message: &str, frame_id: u8) -> Result<Vec<u8>> {
    check_value_length(1 + message.len())?;
    let mut frame = header(frame_id, TAG_ERROR, 1 + message.len());
    frame.push(code);
    frame.extend_from_slice(message.as_bytes());
    Ok(frame)
}

/// Decode an error value into `(code, message)`.
pub fn decode_error(value: &[u8]) -> Result<(u8, String)> {
    check_value_length(value.len())?;
    let mut r = Reader { buf: value };
    let code = r.u8("code")?;
    let message = r.text("message", r.buf.len())?;
    Ok((code, message))
}

/// Encode a close frame (empty value).
pub fn encode_close(frame_id: u8) -> Vec<u8> {
    header(frame_id, TAG_CLOSE, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = "4a0d59b2b8b2a3f4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";

    fn message(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(Error::Vortex(message)) => message,
            other => panic!("expected a Vortex error, got {other:?}"),
        }
    }

    fn meta() -> PieceMetadata {
        PieceMetadata {
            number: 7,
            offset: 7 * 4 * 1024 * 1024,
            length: 4 * 1024 * 1024,
            digest: "crc32:3299754941".into(),
            parent_id: "127.0.0.1-host-peer".into(),
            traffic_type: 1,
            cost_secs: 2,
            created_at: -5,
        }
    }

    #[test]
    fn download_piece_roundtrip() {
        let frame = encode_download_piece(TASK, 42, 9, TAG_DOWNLOAD_CACHE_PIECE).unwrap();
        assert_eq!(frame.len(), 74);
        assert_eq!(
            decode_header(&frame[..6]).unwrap(),
            (9, TAG_DOWNLOAD_CACHE_PIECE, 68)
        );
        assert_eq!(
            decode_download_piece(&frame[6..]).unwrap(),
            (TASK.to_owned(), 42)
        );
    }

    #[test]
    fn piece_content_roundtrip() {
        let frame = encode_piece_content(&meta(), 3, TAG_PIECE_CONTENT).unwrap();
        let (_, tag, length) = decode_header(&frame[..6]).unwrap();
        assert_eq!((tag, length as usize), (TAG_PIECE_CONTENT, frame.len() - 6));
        assert_eq!(decode_piece_content(&frame[6..]).unwrap(), meta());
    }

    #[test]
    fn error_and_close_roundtrip() {
        let frame = encode_error(2, "piece 3 not found", 1).unwrap();
        assert_eq!(decode_header(&frame[..6]).unwrap(), (1, TAG_ERROR, 18));
        assert_eq!(
            decode_error(&frame[6..]).unwrap(),
            (2, "piece 3 not found".to_owned())
        );
        assert_eq!(encode_close(5), vec![5, TAG_CLOSE, 0, 0, 0, 0]);
        assert_eq!(decode_header(&encode_close(5)).unwrap(), (5, TAG_CLOSE, 0));
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            message(decode_header(&[0; 5])),
            "header must be 6 bytes, got 5"
        );
        assert_eq!(message(decode_header(&[0, 8, 0, 0, 0, 0])), "unknown tag 8");
        assert_eq!(
            message(decode_header(&[0, 255, 0, 1, 0, 1])),
            "value length 65537 exceeds MAX_VALUE_LENGTH 65536"
        );
        assert_eq!(
            message(decode_header(&[0, 0, 0, 0, 0, 67])),
            "value length 67 is invalid for tag 0"
        );
        assert_eq!(
            message(decode_header(&[0, 254, 0, 0, 0, 1])),
            "value length 1 is invalid for tag 254"
        );
        assert_eq!(
            message(decode_header(&[0, 255, 0, 0, 0, 0])),
            "value length 0 is invalid for tag 255"
        );
    }

    #[test]
    fn download_piece_errors() {
        assert_eq!(
            message(decode_download_piece(&[0; 67])),
            "download piece value must be 68 bytes, got 67"
        );
        let mut value = encode_download_piece(TASK, 1, 0, 0).unwrap()[6..].to_vec();
        value[0] = b'A';
        assert_eq!(
            message(decode_download_piece(&value)),
            "task_id must be 64 lowercase hex characters"
        );
        value[0] = 0xff;
        assert_eq!(
            message(decode_download_piece(&value)),
            "task_id must be 64 lowercase hex characters"
        );
        assert_eq!(
            message(encode_download_piece("abc", 1, 0, 0)),
            "task_id must be 64 lowercase hex characters"
        );
        assert_eq!(
            message(encode_download_piece(TASK, 1, 0, 1)),
            "tag 1 is not a download piece tag"
        );
    }

    #[test]
    fn piece_content_errors() {
        let value = encode_piece_content(&meta(), 0, TAG_PIECE_CONTENT).unwrap()[6..].to_vec();
        assert_eq!(
            message(decode_piece_content(&value[..2])),
            "truncated metadata_len: need 4 bytes, 2 left"
        );
        assert_eq!(
            message(decode_piece_content(&value[..value.len() - 1])),
            format!(
                "metadata_len {} does not match the {} bytes that follow",
                value.len() - 4,
                value.len() - 5
            )
        );
        let mut overrun = value.clone();
        overrun[24..28].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(
            message(decode_piece_content(&overrun)),
            format!(
                "truncated digest: need 1000 bytes, {} left",
                value.len() - 28
            )
        );
        let mut bad_text = value.clone();
        bad_text[28] = 0xff;
        assert_eq!(
            message(decode_piece_content(&bad_text)),
            "digest is not valid UTF-8"
        );
        let mut trailing = value.clone();
        trailing.push(0);
        let metadata_len = (trailing.len() - 4) as u32;
        trailing[..4].copy_from_slice(&metadata_len.to_be_bytes());
        assert_eq!(
            message(decode_piece_content(&trailing)),
            "1 trailing bytes after created_at"
        );
        assert_eq!(
            message(encode_piece_content(&meta(), 0, TAG_CLOSE)),
            "tag 254 is not a piece content tag"
        );
        let huge = PieceMetadata {
            parent_id: "x".repeat(MAX_VALUE_LENGTH),
            ..meta()
        };
        assert!(
            message(encode_piece_content(&huge, 0, TAG_PIECE_CONTENT)).starts_with("value length")
        );
    }

    #[test]
    fn error_value_errors() {
        assert_eq!(
            message(decode_error(&[])),
            "truncated code: need 1 bytes, 0 left"
        );
        assert_eq!(
            message(decode_error(&[1, 0xc3])),
            "message is not valid UTF-8"
        );
        assert!(message(encode_error(1, &"e".repeat(MAX_VALUE_LENGTH), 0))
            .starts_with("value length 65537"));
    }
}
