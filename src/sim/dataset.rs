//! The simulator's deterministic synthetic merchants. Merchant `i` has ID `898` followed by `i` as 12
//! zero-padded digits (`898000000000042` is merchant 42) and is computed from `i` alone, so a data set
//! of any size "exists" at once, costs no memory until changed, and is the same on every machine.
//!
//! Status by `i % 100`: 97 is PENDING_REVIEW, 98 SUSPENDED, 99 CLOSED, everything else ACTIVE (so 3%
//! are not ACTIVE; e.g. `898000000000097`, `...098`, `...099`).
use prost_types::Timestamp;

use crate::pb::{Merchant, MerchantStatus};

/// Every synthetic ID starts with this (a made-up acquirer prefix).
pub const ID_PREFIX: &str = "898";
/// Digits after the prefix.
const INDEX_DIGITS: usize = 12;
/// 2026-01-01T00:00:00Z: synthetic merchants were last changed within the year after it.
const EPOCH_SECONDS: i64 = 1_767_225_600;

const NAME_STEMS: &[&str] = &[
    "Golden Dragon",
    "Jade Garden",
    "Sunrise",
    "Harbour View",
    "Lucky Star",
    "Red Lantern",
    "Blue Lotus",
    "Silver Pine",
    "Peach Blossom",
    "Great Wall",
    "Pearl River",
    "Bamboo Grove",
    "Morning Dew",
    "Twin Phoenix",
    "Evergreen",
    "West Lake",
    "Spring Breeze",
    "Mountain Tea",
    "Old Town",
    "Riverside",
];
const KINDS: &[(&str, &str)] = &[
    ("5411", "Supermarket"),
    ("5812", "Restaurant"),
    ("5814", "Noodle Bar"),
    ("5499", "Convenience Store"),
    ("5912", "Pharmacy"),
    ("5541", "Service Station"),
    ("5311", "Department Store"),
    ("5462", "Bakery"),
    ("5999", "Gift Shop"),
    ("7011", "Hotel"),
    ("4121", "Taxi Co."),
    ("5732", "Electronics"),
];
const CITIES: &[&str] = &[
    "Shanghai",
    "Beijing",
    "Guangzhou",
    "Shenzhen",
    "Hangzhou",
    "Chengdu",
    "Wuhan",
    "Nanjing",
    "Xi'an",
    "Suzhou",
    "Tianjin",
    "Chongqing",
    "Qingdao",
    "Xiamen",
    "Kunming",
    "Harbin",
];

/// The ID of synthetic merchant `index`.
pub fn synthetic_id(index: u64) -> String {
    let mut id = String::with_capacity(ID_PREFIX.len() + INDEX_DIGITS);
    id.push_str(ID_PREFIX);
    id.push_str(decimal(index, INDEX_DIGITS).as_str());
    id
}

/// The index of a synthetic ID, if `id` has the synthetic shape.
pub fn synthetic_index(id: &str) -> Option<u64> {
    let digits = id.strip_prefix(ID_PREFIX)?;
    if digits.len() != INDEX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The status rule documented at the top of this module.
pub fn synthetic_status(index: u64) -> MerchantStatus {
    match index % 100 {
        97 => MerchantStatus::PendingReview,
        98 => MerchantStatus::Suspended,
        99 => MerchantStatus::Closed,
        _ => MerchantStatus::Active,
    }
}

/// Synthetic merchant `index`, at version 1.
pub fn synthetic_merchant(index: u64) -> Merchant {
    let mix = splitmix64(index);
    let stem = NAME_STEMS[(mix % NAME_STEMS.len() as u64) as usize];
    let (mcc, kind) = KINDS[((mix >> 16) % KINDS.len() as u64) as usize];
    let city = CITIES[((mix >> 32) % CITIES.len() as u64) as usize];
    Merchant {
        merchant_id: synthetic_id(index),
        name: synthetic_name(stem, kind, index),
        mcc: mcc.to_owned(),
        city: city.to_owned(),
        status: synthetic_status(index) as i32,
        version: 1,
        updated_at: Some(Timestamp { seconds: EPOCH_SECONDS + ((mix >> 40) % 31_536_000) as i64, nanos: 0 }),
    }
}

fn synthetic_name(stem: &str, kind: &str, index: u64) -> String {
    let mut name = String::with_capacity(stem.len() + kind.len() + 6);
    for part in [stem, " ", kind, " #"] {
        name.push_str(part);
    }
    name.push_str(decimal(index % 1000, 1).as_str());
    name
}

/// `value` in decimal, zero-padded to at least `width` digits, without allocating: a listing of the
/// simulator's merchants generates every one of them, and `format!` was a third of that.
fn decimal(value: u64, width: usize) -> Decimal {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    Decimal { start: at.min(digits.len() - width.min(digits.len())), digits }
}

/// Decimal digits of a `u64` (at most 20), right-aligned in a buffer.
struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.digits[self.start..]).expect("ASCII digits")
    }
}

/// A fixed, well-mixed function of the index, so neighbouring merchants look unrelated.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_what_formatting_writes() {
        for value in [0, 7, 42, 999, 1000, 123_456_789_012, 1_234_567_890_123, u64::MAX] {
            for width in [1, 12, 20] {
                assert_eq!(decimal(value, width).as_str(), format!("{value:0width$}"));
            }
        }
        let name = synthetic_merchant(1042).name;
        assert!(name.ends_with(" #42") && !name.contains("  "), "{name}");
    }

    #[test]
    fn ids_follow_the_documented_scheme() {
        assert_eq!(synthetic_id(42), "898000000000042");
        assert_eq!(synthetic_index("898000000000042"), Some(42));
        assert_eq!(synthetic_index("898000000042"), None);
        assert_eq!(synthetic_index("123000000000042"), None);
        assert_eq!(synthetic_index("89800000000004x"), None);
    }

    #[test]
    fn merchants_are_deterministic_and_varied() {
        assert_eq!(synthetic_merchant(7), synthetic_merchant(7));
        let names: std::collections::HashSet<_> = (0..50).map(|i| synthetic_merchant(i).name).collect();
        assert!(names.len() > 40, "names should vary: {names:?}");
        assert_eq!(synthetic_merchant(42).version, 1);
    }

    #[test]
    fn three_percent_are_not_active() {
        assert_eq!(synthetic_status(97), MerchantStatus::PendingReview);
        assert_eq!(synthetic_status(98), MerchantStatus::Suspended);
        assert_eq!(synthetic_status(99), MerchantStatus::Closed);
        let inactive = (0..10_000).filter(|&i| synthetic_status(i) != MerchantStatus::Active).count();
        assert_eq!(inactive, 300);
    }
}
