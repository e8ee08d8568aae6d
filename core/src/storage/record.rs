//! The byte format shared by every storage file: a checksummed file header, then
//! length-prefixed, checksummed records whose payload is bincode.
//!
//! ```text
//! header: magic [8] | format version u32 LE | param u64 LE | crc32c(previous 20 bytes) u32 LE
//! record: payload length u32 LE | crc32c(payload) u32 LE | payload (bincode 2, standard config)
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bumped on any change to the bytes a file holds; a reader refuses other versions.
/// 2: sessions registered in the log (session ids, owners, command digests) and
/// registration numbers on accounts. 3: membership entries in the log and the
/// membership in snapshots.
pub const FORMAT_VERSION: u32 = 3;
pub const HEADER_BYTES: usize = 24;
pub const RECORD_HEADER_BYTES: usize = 8;

/// One file kind per magic, so a file put in the wrong place is refused, not misread.
pub const MAGIC_LOG_SEGMENT: [u8; 8] = *b"CHATWAL\0";
pub const MAGIC_HARD_STATE: [u8; 8] = *b"CHATHRD\0";
pub const MAGIC_SNAPSHOT: [u8; 8] = *b"CHATSNP\0";

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    Short,
    /// Wrong magic or checksum.
    Bad,
    /// A well-formed header of a version this build does not read.
    Version(u32),
}

pub fn encode_header(buf: &mut Vec<u8>, magic: [u8; 8], param: u64) {
    let start = buf.len();
    buf.extend_from_slice(&magic);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&param.to_le_bytes());
    let crc = crc32c::crc32c(&buf[start..]);
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// Checks the header at the start of `bytes` and returns its `param`.
pub fn decode_header(bytes: &[u8], magic: [u8; 8]) -> Result<u64, HeaderError> {
    let header = bytes.get(..HEADER_BYTES).ok_or(HeaderError::Short)?;
    let crc = u32::from_le_bytes(array(&header[20..24]));
    if crc != crc32c::crc32c(&header[..20]) || header[..8] != magic {
        return Err(HeaderError::Bad);
    }
    let version = u32::from_le_bytes(array(&header[8..12]));
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    Ok(u64::from_le_bytes(array(&header[12..20])))
}

/// Appends one record holding `value` to `buf`, returning the payload length. On error
/// `buf` is left as it was.
pub fn encode_record<T: Serialize>(
    buf: &mut Vec<u8>,
    value: &T,
    payload_bytes_max: usize,
) -> Result<usize, String> {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    let encoded = bincode::serde::encode_into_std_write(value, buf, bincode::config::standard());
    let payload_len = buf.len() - start - RECORD_HEADER_BYTES;
    let refused = match encoded {
        Err(error) => Some(format!("does not encode: {error}")),
        Ok(_) if payload_len == 0 || payload_len > payload_bytes_max => Some(format!(
            "encodes to {payload_len} bytes; a record holds 1 to {payload_bytes_max}"
        )),
        Ok(_) => None,
    };
    if let Some(reason) = refused {
        buf.truncate(start);
        return Err(reason);
    }
    let crc = crc32c::crc32c(&buf[start + RECORD_HEADER_BYTES..]);
    // The bound above is at most u32::MAX by construction of every caller's maximum.
    buf[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(payload_len)
}

/// The outcome of reading the record that starts at some offset.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordRead<'a> {
    /// A record whose checksum matches; the next record starts at `end`.
    Valid {
        payload: &'a [u8],
        end: usize,
    },
    /// The record header or payload runs past the end of the bytes.
    Partial,
    /// The length is zero or above the maximum.
    BadLength(u64),
    BadChecksum,
}

pub fn read_record(bytes: &[u8], offset: usize, payload_bytes_max: usize) -> RecordRead<'_> {
    let Some(header) = bytes.get(offset..offset.saturating_add(RECORD_HEADER_BYTES)) else {
        return RecordRead::Partial;
    };
    let len = u32::from_le_bytes(array(&header[..4])) as usize;
    let crc = u32::from_le_bytes(array(&header[4..]));
    if len == 0 || len > payload_bytes_max {
        return RecordRead::BadLength(len as u64);
    }
    let start = offset + RECORD_HEADER_BYTES;
    let Some(payload) = bytes.get(start..start + len) else {
        return RecordRead::Partial;
    };
    if crc32c::crc32c(payload) != crc {
        return RecordRead::BadChecksum;
    }
    RecordRead::Valid {
        payload,
        end: start + len,
    }
}

/// Whether any intact record starts after `offset`: evidence that the damage at `offset`
/// is not a torn tail (a torn write leaves only a prefix of what it wrote, so nothing
/// intact can follow the tear) but corruption of data that had been written in full.
///
/// A false positive needs a 32-bit checksum to match by chance at a plausible length;
/// it would turn a torn tail into a reported corruption, the safe direction.
pub fn any_valid_record_after(bytes: &[u8], offset: usize, payload_bytes_max: usize) -> bool {
    (offset + 1..bytes.len()).any(|start| {
        matches!(
            read_record(bytes, start, payload_bytes_max),
            RecordRead::Valid { .. }
        )
    })
}

/// Decodes a payload that must be exactly one value.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    let (value, used) = bincode::serde::decode_from_slice(payload, bincode::config::standard())
        .map_err(|error| error.to_string())?;
    if used != payload.len() {
        return Err(format!(
            "{} trailing bytes after the value",
            payload.len() - used
        ));
    }
    Ok(value)
}

/// Copies a slice whose length the caller has already fixed into an array.
fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(slice);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_detects_damage() {
        let mut buf = Vec::new();
        let len = encode_record(&mut buf, &("hello", 7u64), 1024).expect("small value encodes");
        assert_eq!(buf.len(), RECORD_HEADER_BYTES + len);
        let RecordRead::Valid { payload, end } = read_record(&buf, 0, 1024) else {
            panic!("fresh record must read back");
        };
        assert_eq!(end, buf.len());
        let value: (String, u64) = decode_payload(payload).expect("decodes");
        assert_eq!(value, ("hello".to_string(), 7));

        assert_eq!(
            read_record(&buf[..buf.len() - 1], 0, 1024),
            RecordRead::Partial
        );
        assert_eq!(read_record(&buf[..5], 0, 1024), RecordRead::Partial);
        let mut flipped = buf.clone();
        flipped[RECORD_HEADER_BYTES] ^= 1;
        assert_eq!(read_record(&flipped, 0, 1024), RecordRead::BadChecksum);
        assert_eq!(read_record(&[0; 16], 0, 1024), RecordRead::BadLength(0));
        assert!(read_record(&buf, 0, len - 1) == RecordRead::BadLength(len as u64));
    }

    #[test]
    fn oversized_record_is_refused_and_leaves_buffer_alone() {
        let mut buf = vec![1, 2, 3];
        assert!(encode_record(&mut buf, &vec![0u8; 100], 50).is_err());
        assert_eq!(buf, vec![1, 2, 3]);
    }

    #[test]
    fn header_round_trips_and_refuses_other_versions() {
        let mut buf = Vec::new();
        encode_header(&mut buf, MAGIC_LOG_SEGMENT, 42);
        assert_eq!(buf.len(), HEADER_BYTES);
        assert_eq!(decode_header(&buf, MAGIC_LOG_SEGMENT), Ok(42));
        assert_eq!(decode_header(&buf, MAGIC_SNAPSHOT), Err(HeaderError::Bad));
        assert_eq!(
            decode_header(&buf[..10], MAGIC_LOG_SEGMENT),
            Err(HeaderError::Short)
        );

        let mut future = buf.clone();
        future[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let crc = crc32c::crc32c(&future[..20]);
        future[20..24].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_header(&future, MAGIC_LOG_SEGMENT),
            Err(HeaderError::Version(FORMAT_VERSION + 1))
        );
    }

    #[test]
    fn intact_record_after_damage_is_found() {
        let mut buf = Vec::new();
        encode_record(&mut buf, &"first", 1024).expect("encodes");
        let second = buf.len();
        encode_record(&mut buf, &"second", 1024).expect("encodes");
        buf[0] ^= 0x40; // damage the first record's length
        assert!(any_valid_record_after(&buf, 0, 1024));
        assert!(!any_valid_record_after(&buf, second, 1024));
    }
}
