//! How the positive store packs an ID and its record: IDs of up to 19 digits as a number and a digit
//! count (so leading zeros survive), and a record without its leading `merchant_id` field when that is
//! the ID it is stored under (the ID is then held once, packed).

/// Longest digit string packed into a `u64` (10^19 - 1 < 2^64).
pub(super) const MAX_PACKED_DIGITS: usize = 19;
/// The protobuf key of `Merchant.merchant_id` (field 1, length-delimited), which prost writes first.
pub(super) const ID_FIELD_KEY: u8 = 0x0A;
/// An ID as the store keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key<'a> {
    /// 1 to 19 ASCII digits: their value and how many there are (so `0042` and `42` differ).
    Digits { value: u64, count: u8 },
    /// Anything else, as is.
    Text(&'a [u8]),
}

impl<'a> Key<'a> {
    pub(super) fn of(id: &'a str) -> Self {
        let bytes = id.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_PACKED_DIGITS {
            return Self::Text(bytes);
        }
        let mut value = 0u64;
        for &byte in bytes {
            if !byte.is_ascii_digit() {
                return Self::Text(bytes);
            }
            value = value * 10 + u64::from(byte - b'0');
        }
        Self::Digits { value, count: bytes.len() as u8 }
    }

    /// The ID's text (digits are written into `buffer`).
    pub(super) fn text<'b>(self, buffer: &'b mut [u8; MAX_PACKED_DIGITS]) -> &'b [u8]
    where
        'a: 'b,
    {
        match self {
            Self::Digits { mut value, count } => {
                let digits = &mut buffer[..usize::from(count)];
                for digit in digits.iter_mut().rev() {
                    *digit = b'0' + (value % 10) as u8;
                    value /= 10;
                }
                digits
            }
            Self::Text(bytes) => bytes,
        }
    }
}

/// The record holds its `merchant_id` field as stored.
pub(super) const FORM_WHOLE: u8 = 0;
/// The record's leading `merchant_id` field equals the key and was left out.
const FORM_ID_ELIDED: u8 = 1;

/// The bytes to keep of `merchant` stored under `id`, and their form: without the leading
/// `merchant_id` field when it is exactly `id` (and its length fits the one-byte varint the field
/// is then written back with).
pub(super) fn stored_form<'m>(id: &[u8], merchant: &'m [u8]) -> (&'m [u8], u8) {
    let elidable = id.len() < 0x80
        && merchant.len() >= 2 + id.len()
        && merchant[0] == ID_FIELD_KEY
        && usize::from(merchant[1]) == id.len()
        && &merchant[2..2 + id.len()] == id;
    if elidable {
        (&merchant[2 + id.len()..], FORM_ID_ELIDED)
    } else {
        (merchant, FORM_WHOLE)
    }
}
