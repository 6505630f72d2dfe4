//! The snapshot file format, version 1. Every integer outside protobuf is little-endian.
//!
//! ```text
//! magic      8 bytes  "MEDGSNAP"
//! version    u32      FORMAT_VERSION
//! header_len u32      length of the header message
//! header     Header   protobuf (sequence, incarnation, written at, ID rule fingerprint)
//! header_crc u32      CRC-32 of the header message (so the header is judged before any record)
//! records    { varint length > 0, Record protobuf }*   one per merchant
//! end        varint 0
//! count      u64      records written
//! checksum   u32      CRC-32 of every byte from the magic up to and including `count`
//! end_magic  8 bytes  "MEDGEND\n"
//! ```
//!
//! A record is, as a proto:
//! `message Record { merchant.v1.Merchant merchant = 1; uint64 as_of_sequence = 2; int64 learned_at_unix_ms = 3; }`
//! The merchant is written as the stores hold it (already encoded), so writing never re-encodes.
use std::io::{self, Read, Write};

use bytes::BufMut;
use prost::Message;

use crate::merchant_id::IdRule;
use crate::pb::Merchant;

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"MEDGSNAP";
/// The last bytes of a complete snapshot file.
pub const END_MAGIC: &[u8; 8] = b"MEDGEND\n";
/// The layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Larger headers or records are not something this format writes: the length itself is damaged.
const MAX_MESSAGE: u32 = 1 << 20;
/// `count`, `checksum` and `end_magic`.
pub const TRAILER_LEN: usize = 8 + 4 + 8;

/// What a snapshot says about itself.
#[derive(Clone, PartialEq, Message)]
pub struct Header {
    /// Every core change up to this sequence is reflected in the records.
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    /// The core history the sequence belongs to.
    #[prost(string, tag = "2")]
    pub incarnation: String,
    /// When the writer started (Unix milliseconds).
    #[prost(int64, tag = "3")]
    pub written_at_unix_ms: i64,
    /// [`id_rule_fingerprint`] of the ID rule the IDs were normalised under.
    #[prost(fixed64, tag = "4")]
    pub id_rule_fingerprint: u64,
    /// The same rule in words, for people inspecting the file.
    #[prost(string, tag = "5")]
    pub id_rule: String,
    /// The writer's version.
    #[prost(string, tag = "6")]
    pub written_by: String,
}

/// One merchant as read back.
#[derive(Clone, PartialEq, Message)]
pub struct Record {
    /// The merchant record the core sent.
    #[prost(message, optional, tag = "1")]
    pub merchant: Option<Merchant>,
    /// Every change up to this core sequence is reflected in the record.
    #[prost(uint64, tag = "2")]
    pub as_of_sequence: u64,
    /// When the edge learned it from the core (Unix milliseconds).
    #[prost(int64, tag = "3")]
    pub learned_at_unix_ms: i64,
}

/// A record as the loader reads it: the merchant left encoded, as the stores keep it (decoding and
/// re-encoding every merchant would double the load time).
#[derive(Clone, PartialEq, Message)]
pub struct RawRecord {
    /// The encoded `merchant.v1.Merchant`.
    #[prost(bytes = "bytes", tag = "1")]
    pub merchant: bytes::Bytes,
    /// Every change up to this core sequence is reflected in the record.
    #[prost(uint64, tag = "2")]
    pub as_of_sequence: u64,
    /// When the edge learned it from the core (Unix milliseconds).
    #[prost(int64, tag = "3")]
    pub learned_at_unix_ms: i64,
}

/// The two fields of a `merchant.v1.Merchant` the stores index by (protobuf skips the others).
#[derive(Clone, PartialEq, Message)]
pub struct MerchantKey {
    /// `Merchant.merchant_id`.
    #[prost(string, tag = "1")]
    pub merchant_id: String,
    /// `Merchant.status`.
    #[prost(int32, tag = "5")]
    pub status: i32,
}

/// A stable fingerprint of an ID rule (FNV-1a of its canonical text): IDs normalised under another rule
/// may not even be valid IDs now, so such a snapshot is rejected.
pub fn id_rule_fingerprint(rule: &IdRule) -> u64 {
    describe_rule(rule)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The rule in words (what the fingerprint is taken of).
pub fn describe_rule(rule: &IdRule) -> String {
    let charset = serde_json::to_value(rule.charset).ok().and_then(|v| v.as_str().map(str::to_owned));
    format!("{}..{} {}", rule.min_length, rule.max_length, charset.unwrap_or_default())
}

/// Why a snapshot file was not loaded (the `reason` label of the load metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The file ends early (or is empty): a write that never finished, or a copy cut short.
    Truncated,
    /// Bytes differ from what was written (checksum, framing or magic).
    Corrupted,
    /// Written by a build with another format version.
    UnknownVersion,
    /// Written under another ID rule.
    OtherIdRule,
    /// Cannot be read: a directory, no permission, an I/O error.
    Unreadable,
}

impl RejectReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::Corrupted => "corrupted",
            Self::UnknownVersion => "unknown_version",
            Self::OtherIdRule => "other_id_rule",
            Self::Unreadable => "unreadable",
        }
    }
}

/// A file that is not a usable snapshot: why, in words that say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejected {
    /// For the metric.
    pub reason: RejectReason,
    /// What is wrong with the file.
    pub message: String,
}

impl Rejected {
    fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }

    fn truncated(at: u64, reading: &str) -> Self {
        Self::new(
            RejectReason::Truncated,
            format!("truncated: the file ends at byte {at} while reading {reading} (a write that never finished?)"),
        )
    }

    fn corrupted(message: impl Into<String>) -> Self {
        Self::new(RejectReason::Corrupted, format!("corrupted: {}", message.into()))
    }

    /// An I/O error while reading (not an early end of file).
    pub fn unreadable(error: &io::Error) -> Self {
        Self::new(RejectReason::Unreadable, format!("unreadable: {error}"))
    }
}

/// Counts and checksums every byte that passes through.
pub struct Summing<T> {
    inner: T,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<T> Summing<T> {
    /// Starts at byte 0 with an empty checksum.
    pub fn new(inner: T) -> Self {
        Self { inner, crc: crc32fast::Hasher::new(), bytes: 0 }
    }

    /// Bytes passed through.
    pub fn position(&self) -> u64 {
        self.bytes
    }

    /// The CRC-32 of every byte passed through so far.
    pub fn checksum(&self) -> u32 {
        self.crc.clone().finalize()
    }

    /// The wrapped reader or writer.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Summing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.crc.update(&buf[..read]);
        self.bytes += read as u64;
        Ok(read)
    }
}

/// Writes the magic, the version and the header.
pub fn write_header(out: &mut impl Write, header: &Header) -> io::Result<()> {
    let encoded = header.encode_to_vec();
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&(encoded.len() as u32).to_le_bytes())?;
    out.write_all(&encoded)?;
    out.write_all(&crc32fast::hash(&encoded).to_le_bytes())
}

/// Appends one record (`merchant` already encoded as `merchant.v1.Merchant`) to `buffer`.
pub fn encode_record(buffer: &mut Vec<u8>, merchant: &[u8], as_of_sequence: u64, learned_at_unix_ms: i64) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    let body = 1
        + encoded_len_varint(merchant.len() as u64)
        + merchant.len()
        + 1
        + encoded_len_varint(as_of_sequence)
        + 1
        + encoded_len_varint(learned_at_unix_ms as u64);
    encode_varint(body as u64, buffer);
    encode_key(1, WireType::LengthDelimited, buffer);
    encode_varint(merchant.len() as u64, buffer);
    buffer.put_slice(merchant);
    encode_key(2, WireType::Varint, buffer);
    encode_varint(as_of_sequence, buffer);
    // int64 is encoded as the two's-complement varint, as prost does.
    encode_key(3, WireType::Varint, buffer);
    encode_varint(learned_at_unix_ms as u64, buffer);
}

/// Ends the records and writes the trailer (the checksum covers everything before it).
pub fn write_trailer<W: Write>(out: &mut Summing<W>, count: u64) -> io::Result<()> {
    out.write_all(&[0])?;
    out.write_all(&count.to_le_bytes())?;
    let checksum = out.checksum();
    out.write_all(&checksum.to_le_bytes())?;
    out.write_all(END_MAGIC)
}

/// What a complete, verified file held besides its records.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Its header.
    pub header: Header,
    /// Records in it.
    pub merchants: u64,
    /// Its size.
    pub bytes: u64,
}

/// Reads `exactly` bytes, or says the file ended early.
fn read_exact<R: Read>(input: &mut Summing<R>, buf: &mut [u8], reading: &str) -> Result<(), Rejected> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => return Err(Rejected::truncated(input.position(), reading)),
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(Rejected::unreadable(&error)),
        }
    }
    Ok(())
}

fn read_u32<R: Read>(input: &mut Summing<R>, reading: &str) -> Result<u32, Rejected> {
    let mut bytes = [0; 4];
    read_exact(input, &mut bytes, reading)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_varint<R: Read>(input: &mut Summing<R>, reading: &str) -> Result<u64, Rejected> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let mut byte = [0; 1];
        read_exact(input, &mut byte, reading)?;
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Rejected::corrupted(format!("a record length at byte {} does not end", input.position())))
}

/// Reads and checks the header (magic, version, header checksum, ID rule): what a loader needs before
/// reading any record.
pub fn read_header<R: Read>(input: &mut Summing<R>, rule: Option<&IdRule>) -> Result<Header, Rejected> {
    let mut magic = [0; 8];
    if let Err(rejected) = read_exact(input, &mut magic, "the magic") {
        return Err(match input.position() {
            0 => Rejected::new(RejectReason::Truncated, "truncated: the file is empty"),
            _ => rejected,
        });
    }
    if &magic != MAGIC {
        return Err(Rejected::corrupted(format!("not a merchant-edge snapshot (starts with {magic:02x?})")));
    }
    let version = read_u32(input, "the format version")?;
    if version != FORMAT_VERSION {
        return Err(Rejected::new(
            RejectReason::UnknownVersion,
            format!("format version {version}; this build reads version {FORMAT_VERSION} (written by another build)"),
        ));
    }
    let len = read_u32(input, "the header length")?;
    if len > MAX_MESSAGE {
        return Err(Rejected::corrupted(format!("header length {len} is implausible")));
    }
    let mut encoded = vec![0; len as usize];
    read_exact(input, &mut encoded, "the header")?;
    let stored = read_u32(input, "the header checksum")?;
    if crc32fast::hash(&encoded) != stored {
        return Err(Rejected::corrupted("the header checksum does not match"));
    }
    let header = Header::decode(encoded.as_slice())
        .map_err(|e| Rejected::corrupted(format!("the header does not decode: {e}")))?;
    if let Some(rule) = rule {
        if header.id_rule_fingerprint != id_rule_fingerprint(rule) {
            return Err(Rejected::new(
                RejectReason::OtherIdRule,
                format!(
                    "written under the ID rule `{}`; the config's rule is `{}` (IDs may not be valid now)",
                    header.id_rule,
                    describe_rule(rule)
                ),
            ));
        }
    }
    Ok(header)
}

/// Reads the records after the header, handing each (with its merchant's ID and status) to `take`,
/// then checks the trailer: the count, the
/// checksum over the whole content, and that nothing follows. Only an `Ok` means the records handed
/// over are the file's whole and intact content.
pub fn read_records<R: Read>(
    mut input: Summing<R>,
    header: Header,
    mut take: impl FnMut(RawRecord, MerchantKey),
) -> Result<Verified, Rejected> {
    let mut count = 0u64;
    loop {
        let reading = format!("record {}", count + 1);
        let len = read_varint(&mut input, &reading)?;
        if len == 0 {
            break;
        }
        if len > u64::from(MAX_MESSAGE) {
            return Err(Rejected::corrupted(format!("record {} has an implausible length {len}", count + 1)));
        }
        let mut buffer = vec![0; len as usize];
        read_exact(&mut input, &mut buffer, &reading)?;
        let undecodable =
            |e: prost::DecodeError| Rejected::corrupted(format!("record {} does not decode: {e}", count + 1));
        // From `Bytes`, the merchant is a view of the record's buffer, not a copy.
        let record = RawRecord::decode(bytes::Bytes::from(buffer)).map_err(undecodable)?;
        let key = MerchantKey::decode(record.merchant.clone()).map_err(undecodable)?;
        if key.merchant_id.is_empty() {
            return Err(Rejected::corrupted(format!("record {} holds no merchant ID", count + 1)));
        }
        take(record, key);
        count += 1;
    }
    let mut stored_count = [0; 8];
    read_exact(&mut input, &mut stored_count, "the trailer")?;
    let computed = input.checksum();
    let mut rest = [0; 12];
    read_exact(&mut input, &mut rest, "the trailer")?;
    let stored = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
    if &rest[4..] != END_MAGIC {
        return Err(Rejected::corrupted("the end marker is missing"));
    }
    if stored != computed {
        return Err(Rejected::corrupted(format!(
            "checksum mismatch (stored {stored:08x}, content {computed:08x}): bytes changed after writing"
        )));
    }
    let stored_count = u64::from_le_bytes(stored_count);
    if stored_count != count {
        return Err(Rejected::corrupted(format!(
            "the trailer counts {stored_count} merchants, the file holds {count}"
        )));
    }
    let bytes = input.position();
    let mut extra = [0; 1];
    match input.into_inner().read(&mut extra) {
        Ok(0) => Ok(Verified { header, merchants: count, bytes }),
        Ok(_) => Err(Rejected::corrupted(format!("bytes follow the end marker at byte {bytes}"))),
        Err(error) => Err(Rejected::unreadable(&error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::dataset::synthetic_merchant;

    fn header() -> Header {
        let rule = IdRule::default();
        Header {
            sequence: 7,
            incarnation: "inc-1".into(),
            written_at_unix_ms: 1_700_000_000_000,
            id_rule_fingerprint: id_rule_fingerprint(&rule),
            id_rule: describe_rule(&rule),
            written_by: "test".into(),
        }
    }

    fn file(merchants: u64) -> Vec<u8> {
        let mut out = Summing::new(Vec::new());
        write_header(&mut out, &header()).unwrap();
        let mut buffer = Vec::new();
        for i in 0..merchants {
            encode_record(&mut buffer, &synthetic_merchant(i).encode_to_vec(), i, 1_700_000_000_000 - i as i64);
        }
        out.write_all(&buffer).unwrap();
        write_trailer(&mut out, merchants).unwrap();
        out.into_inner()
    }

    fn read(bytes: &[u8]) -> Result<(Verified, Vec<Record>), Rejected> {
        let mut input = Summing::new(bytes);
        let header = read_header(&mut input, Some(&IdRule::default()))?;
        let mut records = Vec::new();
        let verified = read_records(input, header, |raw, key| {
            // A damaged merchant may still yield its key; the checksum rejects the file after.
            if let Ok(merchant) = Merchant::decode(raw.merchant) {
                assert_eq!((key.merchant_id.as_str(), key.status), (merchant.merchant_id.as_str(), merchant.status));
                records.push(Record {
                    merchant: Some(merchant),
                    as_of_sequence: raw.as_of_sequence,
                    learned_at_unix_ms: raw.learned_at_unix_ms,
                });
            }
        })?;
        Ok((verified, records))
    }

    #[test]
    fn records_read_back_as_written_and_decode_as_the_documented_proto() {
        let bytes = file(3);
        let (verified, records) = read(&bytes).unwrap();
        assert_eq!(verified, Verified { header: header(), merchants: 3, bytes: bytes.len() as u64 });
        let expected: Vec<Record> = (0..3)
            .map(|i| Record {
                merchant: Some(synthetic_merchant(i)),
                as_of_sequence: i,
                learned_at_unix_ms: 1_700_000_000_000 - i as i64,
            })
            .collect();
        assert_eq!(records, expected, "the hand-written encoding is the Record message's");
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_rejected() {
        let bytes = file(20);
        for len in 0..bytes.len() {
            let rejected = read(&bytes[..len]).unwrap_err();
            assert_eq!(rejected.reason, RejectReason::Truncated, "cut at {len}: {rejected}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            let rejected = read(&flipped).expect_err(&format!("byte {at} flipped"));
            assert_ne!(rejected.reason, RejectReason::OtherIdRule, "byte {at}: {rejected}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(read(&longer).unwrap_err().reason, RejectReason::Corrupted);
    }

    #[test]
    fn another_version_or_id_rule_is_named() {
        let mut bytes = file(1);
        bytes[8] = 2;
        let rejected = read(&bytes).unwrap_err();
        assert_eq!(rejected.reason, RejectReason::UnknownVersion);
        assert!(rejected.message.contains("format version 2"), "{rejected}");
        let bytes = file(1);
        let other = IdRule { charset: crate::merchant_id::Charset::Alphanumeric, ..IdRule::default() };
        let rejected = read_header(&mut Summing::new(bytes.as_slice()), Some(&other)).unwrap_err();
        assert_eq!(rejected.reason, RejectReason::OtherIdRule);
        assert!(rejected.message.contains("15..15 digits"), "{rejected}");
        assert_eq!(read(&[]).unwrap_err().message, "truncated: the file is empty");
    }
}
