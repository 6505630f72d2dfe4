//! Snapshot pages as the edge reads them: `ListMerchants` through a twin of `core.proto` whose
//! `merchants` are bytes (see `build.rs`), each listed merchant checked here against `Merchant`'s field
//! table and then stored as the core encoded it. Decoding each merchant into five strings and encoding
//! it again was most of a warm start's work outside the store; the check walks the bytes once and
//! allocates nothing.
//!
//! The check accepts exactly what decoding as `merchant.v1.Merchant` accepts (a test compares the two on
//! mutated records): the framing, each known field's wire type, UTF-8 text, a well-formed timestamp.
//! Unknown fields are skipped, as protobuf requires, and kept in the stored bytes.
use std::ops::Range;

use bytes::Bytes;
use prost::Message;

// The twin's descriptors leave out the proto comments (their source paths no longer match), so its
// generated items have no docs; `pb` documents the same contract.
#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/listing/merchant.v1.rs"));
}
pub use generated::merchant_core_client::MerchantCoreClient as ListingClient;
pub use generated::{ListMerchantsRequest as ListingRequest, ListMerchantsResponse as ListingPage};

/// What a field of `Merchant` holds, as far as checking its bytes goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    /// A length-delimited UTF-8 string.
    Text,
    /// A varint (integers, booleans, enums).
    Varint,
    /// A length-delimited `google.protobuf.Timestamp`.
    Timestamp,
}

include!(concat!(env!("OUT_DIR"), "/listing/merchant_fields.rs"));

/// Why a listed merchant cannot be stored: its bytes are not a `merchant.v1.Merchant`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedMerchant {
    /// The record ends inside a field.
    #[error("a listed merchant's record ends inside a field")]
    Truncated,
    /// A varint runs past ten bytes or past 64 bits.
    #[error("a listed merchant has an invalid varint")]
    Varint,
    /// A field key names field 0, an invalid wire type, or an unmatched group end.
    #[error("a listed merchant has an invalid field key")]
    Key,
    /// Unknown groups nested deeper than decoders allow.
    #[error("a listed merchant nests groups too deep")]
    Nesting,
    /// A known field arrived with another wire type than its type has.
    #[error("field {0} of a listed merchant has the wrong wire type")]
    WireType(u32),
    /// A text field holds bytes that are not UTF-8.
    #[error("field {0} of a listed merchant is not UTF-8")]
    Text(u32),
    /// The timestamp field does not decode.
    #[error("field {0} of a listed merchant is not a google.protobuf.Timestamp")]
    Timestamp(u32),
}

/// A snapshot page's merchants, checked, their records copied back to back: a page is two
/// allocations, and the decoded response's buffer is released by the reader that decoded it (dropping
/// a slice of it per merchant on another core made every drop a contended atomic).
#[derive(Debug, Default)]
pub struct ListedMerchants {
    records: Vec<u8>,
    listed: Vec<Listed>,
}

/// Where one merchant is in [`ListedMerchants::records`].
#[derive(Debug)]
struct Listed {
    record: Range<usize>,
    id: Range<usize>,
    status: i32,
}

/// One merchant of a page, as the core encoded it.
#[derive(Debug, Clone, Copy)]
pub struct ListedMerchant<'p> {
    /// Its ID (checked UTF-8).
    pub id: &'p str,
    /// The encoded `merchant.v1.Merchant`.
    pub record: &'p [u8],
    /// Its status field.
    pub status: i32,
}

impl ListedMerchants {
    /// Checks every record of a page (see [`check`]); one the edge could not answer with fails it all.
    pub fn check(records: Vec<Bytes>) -> Result<Self, MalformedMerchant> {
        let mut page = Self {
            records: Vec::with_capacity(records.iter().map(Bytes::len).sum()),
            listed: Vec::with_capacity(records.len()),
        };
        for record in records {
            page.push(&record)?;
        }
        Ok(page)
    }

    fn push(&mut self, record: &[u8]) -> Result<(), MalformedMerchant> {
        let (id, status) = check(record)?;
        let start = self.records.len();
        self.records.extend_from_slice(record);
        self.listed.push(Listed { record: start..self.records.len(), id: start + id.start..start + id.end, status });
        Ok(())
    }

    /// `merchants` as a core lists them (for benchmarks and tests that fill a cache without a core).
    pub fn encode<'m>(merchants: impl IntoIterator<Item = &'m crate::pb::Merchant>) -> Self {
        let records = merchants.into_iter().map(|merchant| Bytes::from(merchant.encode_to_vec())).collect();
        Self::check(records).expect("prost encodes well-formed merchants")
    }

    /// How many merchants the page lists.
    pub fn len(&self) -> usize {
        self.listed.len()
    }

    /// Whether the page lists none.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// The page's merchants in the order listed.
    pub fn iter(&self) -> impl Iterator<Item = ListedMerchant<'_>> {
        self.listed.iter().map(|listed| ListedMerchant {
            id: std::str::from_utf8(&self.records[listed.id.clone()]).expect("checked when listed"),
            record: &self.records[listed.record.clone()],
            status: listed.status,
        })
    }
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LENGTH_DELIMITED: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;
/// prost's own recursion limit.
const MAX_GROUP_DEPTH: u32 = 100;

/// Reads protobuf's wire format from a record, remembering where it is.
struct Reader<'r> {
    record: &'r [u8],
    at: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, MalformedMerchant> {
        let mut value = 0u64;
        for (shift, &byte) in self.record[self.at..].iter().take(10).enumerate() {
            // The tenth byte may only carry the 64th bit.
            if shift == 9 && byte > 1 {
                return Err(MalformedMerchant::Varint);
            }
            value |= u64::from(byte & 0x7f) << (7 * shift);
            if byte < 0x80 {
                self.at += shift + 1;
                return Ok(value);
            }
        }
        Err(if self.record.len() - self.at >= 10 { MalformedMerchant::Varint } else { MalformedMerchant::Truncated })
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Result<(u32, u8), MalformedMerchant> {
        let key = u32::try_from(self.varint()?).map_err(|_| MalformedMerchant::Key)?;
        let (number, wire_type) = (key >> 3, (key & 7) as u8);
        if number == 0 || wire_type > FIXED32 {
            return Err(MalformedMerchant::Key);
        }
        Ok((number, wire_type))
    }

    fn take(&mut self, len: u64) -> Result<Range<usize>, MalformedMerchant> {
        let end = usize::try_from(len).ok().and_then(|len| self.at.checked_add(len));
        let end = end.filter(|&end| end <= self.record.len()).ok_or(MalformedMerchant::Truncated)?;
        let range = self.at..end;
        self.at = end;
        Ok(range)
    }

    fn length_delimited(&mut self) -> Result<Range<usize>, MalformedMerchant> {
        let len = self.varint()?;
        self.take(len)
    }

    /// Skips an unknown field's value (a group up to its matching end, nested at most `depth` deep, so
    /// a record of nested groups cannot exhaust the stack).
    fn skip(&mut self, number: u32, wire_type: u8, depth: u32) -> Result<(), MalformedMerchant> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LENGTH_DELIMITED => self.length_delimited().map(drop),
            FIXED32 => self.take(4).map(drop),
            START_GROUP if depth == 0 => Err(MalformedMerchant::Nesting),
            START_GROUP => loop {
                match self.key()? {
                    (end, END_GROUP) if end == number => return Ok(()),
                    (_, END_GROUP) => return Err(MalformedMerchant::Key),
                    (inner, wire_type) => self.skip(inner, wire_type, depth - 1)?,
                }
            },
            _ => Err(MalformedMerchant::Key),
        }
    }
}

/// Checks that `record` is a `merchant.v1.Merchant` the edge can answer with; returns where its ID is
/// and its status.
fn check(record: &[u8]) -> Result<(Range<usize>, i32), MalformedMerchant> {
    let mut reader = Reader { record, at: 0 };
    let (mut id, mut status) = (0..0, 0);
    while reader.at < record.len() {
        let (number, wire_type) = reader.key()?;
        let Some(&(_, kind)) = MERCHANT_FIELDS.iter().find(|(known, _)| *known == number) else {
            reader.skip(number, wire_type, MAX_GROUP_DEPTH)?;
            continue;
        };
        let expected = if kind == FieldKind::Varint { VARINT } else { LENGTH_DELIMITED };
        if wire_type != expected {
            return Err(MalformedMerchant::WireType(number));
        }
        match kind {
            FieldKind::Varint => {
                let value = reader.varint()?;
                if number == MERCHANT_STATUS_FIELD {
                    // An enum is an int32: the low 32 bits, as protobuf decoders take them.
                    status = value as i32;
                }
            }
            FieldKind::Text => {
                let text = reader.length_delimited()?;
                std::str::from_utf8(&record[text.clone()]).map_err(|_| MalformedMerchant::Text(number))?;
                if number == MERCHANT_ID_FIELD {
                    // The last occurrence wins, as when decoding.
                    id = text;
                }
            }
            FieldKind::Timestamp => {
                let message = reader.length_delimited()?;
                prost_types::Timestamp::decode(&record[message]).map_err(|_| MalformedMerchant::Timestamp(number))?;
            }
        }
    }
    Ok((id, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::Merchant;
    use crate::sim::dataset::synthetic_merchant;

    fn one(record: &[u8]) -> Result<ListedMerchants, MalformedMerchant> {
        ListedMerchants::check(vec![Bytes::copy_from_slice(record)])
    }

    #[test]
    fn listed_merchants_are_kept_byte_for_byte_in_order() {
        let merchants: Vec<Merchant> = [0, 42, 999_999].into_iter().map(synthetic_merchant).collect();
        let page = ListedMerchants::encode(&merchants);
        assert_eq!(page.len(), 3);
        for (listed, merchant) in page.iter().zip(&merchants) {
            assert_eq!(listed.id, merchant.merchant_id);
            assert_eq!((listed.record, listed.status), (&merchant.encode_to_vec()[..], merchant.status));
        }
        let empty = one(&[]).unwrap();
        let listed = empty.iter().next().unwrap();
        assert_eq!((listed.id, listed.status), ("", 0), "every field at its default");
    }

    #[test]
    fn unknown_fields_are_skipped_and_kept() {
        let mut record = synthetic_merchant(7).encode_to_vec();
        // Field 99 as a varint, a fixed32, a string and a group holding a varint.
        record.extend_from_slice(&[0x98, 0x06, 0x05, 0x9d, 0x06, 1, 2, 3, 4, 0x9a, 0x06, 1, b'x']);
        record.extend_from_slice(&[0x9b, 0x06, 0x08, 0x01, 0x9c, 0x06]);
        assert_eq!(one(&record).unwrap().iter().next().unwrap().record, &record[..]);
        assert_eq!(Merchant::decode(record.as_slice()).unwrap(), synthetic_merchant(7));
    }

    #[test]
    fn refuses_what_the_public_contract_refuses() {
        let mut text = synthetic_merchant(42);
        text.name = "caf\u{e9}".into();
        let mut broken = text.encode_to_vec();
        let at = broken.windows(2).position(|pair| pair == [0xc3, 0xa9]).unwrap();
        broken[at] = 0xff;
        assert_eq!(one(&broken).unwrap_err(), MalformedMerchant::Text(2));
        let mut truncated = synthetic_merchant(42).encode_to_vec();
        truncated.pop();
        assert!(one(&truncated).is_err());
        assert_eq!(one(&[0x08, 0x01]).unwrap_err(), MalformedMerchant::WireType(1), "the ID as a varint");
        let nested = [0x9b, 0x06].repeat(1000);
        assert_eq!(one(&nested).unwrap_err(), MalformedMerchant::Nesting);
        assert!(Merchant::decode(nested.as_slice()).is_err());
        let page = vec![Bytes::from(synthetic_merchant(1).encode_to_vec()), Bytes::from(broken)];
        assert!(ListedMerchants::check(page).is_err(), "one malformed merchant fails its page");
    }

    /// Accepts a mutated record exactly when prost's decoder of the public `Merchant` does, with the
    /// same ID and status: every byte truncated at, replaced and flipped in turn, over several records.
    #[test]
    fn agrees_with_decoding_on_every_single_byte_mutation() {
        let mut rng = fastrand::Rng::with_seed(12);
        let agrees = |record: Vec<u8>| match (Merchant::decode(record.as_slice()), one(&record)) {
            (Ok(merchant), Ok(page)) => {
                let listed = page.iter().next().unwrap();
                assert_eq!((listed.id, listed.status), (merchant.merchant_id.as_str(), merchant.status), "{record:?}");
            }
            (Err(_), Err(_)) => {}
            (decoded, checked) => panic!("{record:?}: prost {decoded:?}, check {checked:?}"),
        };
        for index in 0..40 {
            let record = synthetic_merchant(index).encode_to_vec();
            for at in 0..record.len() {
                agrees(record[..at].to_vec());
                let mut replaced = record.clone();
                replaced[at] = rng.u8(..);
                agrees(replaced);
                let mut flipped = record.clone();
                flipped[at] ^= 1 << rng.u8(..8);
                agrees(flipped);
            }
        }
    }
}
