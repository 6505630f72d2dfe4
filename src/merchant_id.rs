//! The merchant ID rule: normalisation (trim, full-width to ASCII) and validation with errors that name
//! the rule broken, so a typo made at onboarding is caught at the edge and never reaches the core.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Which characters a merchant ID may hold after normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Charset {
    /// ASCII `0-9` only.
    Digits,
    /// ASCII `0-9`, `A-Z` and `a-z`.
    Alphanumeric,
}

impl Charset {
    fn allows(self, byte: u8) -> bool {
        match self {
            Self::Digits => byte.is_ascii_digit(),
            Self::Alphanumeric => byte.is_ascii_alphanumeric(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Digits => "ASCII digits 0-9",
            Self::Alphanumeric => "ASCII letters and digits",
        }
    }
}

/// The configurable ID rule (`[merchant_id]` in the config). Default: exactly 15 ASCII digits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdRule {
    /// Fewest characters after normalisation.
    pub min_length: usize,
    /// Most characters after normalisation.
    pub max_length: usize,
    /// Which characters an ID may contain.
    pub charset: Charset,
}

impl Default for IdRule {
    fn default() -> Self {
        Self { min_length: 15, max_length: 15, charset: Charset::Digits }
    }
}

/// Why an ID was refused. The Display text is sent to the caller, so it says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("merchant_id is empty; it must be {expected}")]
    /// Nothing is left after trimming.
    Empty {
        /// The rule, in words.
        expected: String,
    },
    #[error(
        "merchant_id has {} after trimming whitespace; rule `length`: it must be {expected}",
        crate::text::count(*.actual, "character", "characters")
    )]
    /// Too short or too long.
    Length {
        /// Characters after trimming.
        actual: usize,
        /// The rule, in words.
        expected: String,
    },
    #[error("merchant_id has {found:?} at position {position}; rule `charset`: it may contain only {allowed}")]
    /// A character the rule does not allow.
    Charset {
        /// The character.
        found: char,
        /// Its position (0-based, after trimming).
        position: usize,
        /// What the rule allows, in words.
        allowed: &'static str,
    },
}

/// Longest input the normaliser examines character by character; anything longer is refused by length
/// alone, so a hostile 4 MB ID costs no more than a 64-character one.
const SCAN_LIMIT: usize = 256;

impl IdRule {
    /// Checks the rule itself (used by config validation).
    pub fn validate(&self) -> Result<(), String> {
        if self.min_length == 0 {
            return Err("min_length must be at least 1".into());
        }
        if self.min_length > self.max_length {
            return Err(format!("min_length ({}) must not exceed max_length ({})", self.min_length, self.max_length));
        }
        if self.max_length > SCAN_LIMIT / 4 {
            return Err(format!("max_length must be at most {}", SCAN_LIMIT / 4));
        }
        Ok(())
    }

    fn expected(&self) -> String {
        let length = if self.min_length == self.max_length {
            format!("exactly {}", self.min_length)
        } else {
            format!("{} to {}", self.min_length, self.max_length)
        };
        format!("{length} {}", self.charset.describe())
    }

    /// Normalises and validates an ID as a terminal sent it. Borrows when the input is already normal
    /// (the common case), so the hit path does not allocate.
    pub fn normalise<'a>(&self, raw: &'a str) -> Result<Cow<'a, str>, IdError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(IdError::Empty { expected: self.expected() });
        }
        if trimmed.len() > SCAN_LIMIT {
            return Err(IdError::Length { actual: trimmed.chars().count(), expected: self.expected() });
        }
        let id: Cow<'a, str> = if trimmed.is_ascii() {
            Cow::Borrowed(trimmed)
        } else {
            Cow::Owned(trimmed.chars().map(fold_full_width).collect())
        };
        let length = id.chars().count();
        if length < self.min_length || length > self.max_length {
            return Err(IdError::Length { actual: length, expected: self.expected() });
        }
        if let Some((position, found)) =
            id.chars().enumerate().find(|&(_, c)| !(c.is_ascii() && self.charset.allows(c as u8)))
        {
            return Err(IdError::Charset { found, position: position + 1, allowed: self.charset.describe() });
        }
        Ok(id)
    }
}

impl IdRule {
    /// The ID as the normaliser sees it before checking the rule (trimmed, full-width folded), for
    /// explaining an ID that breaks it.
    pub fn fold(raw: &str) -> String {
        raw.trim().chars().map(fold_full_width).collect()
    }

    /// The characters an ID may hold.
    pub fn alphabet(&self) -> Vec<char> {
        (b'0'..=b'z').filter(|&byte| self.charset.allows(byte)).map(char::from).collect()
    }
}

/// Maps the full-width forms of ASCII (U+FF01..U+FF5E, e.g. `８` typed on a CJK keyboard) to ASCII.
fn fold_full_width(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> IdRule {
        IdRule::default()
    }

    #[test]
    fn plain_ids_pass_borrowed() {
        let id = rule().normalise("898000000000042").unwrap();
        assert!(matches!(id, Cow::Borrowed("898000000000042")));
    }

    #[test]
    fn whitespace_and_full_width_digits_are_normalised() {
        assert_eq!(rule().normalise("  898000000000042\t\n").unwrap(), "898000000000042");
        let full_width: String =
            "898000000000042".chars().map(|c| char::from_u32(c as u32 + 0xFEE0).unwrap()).collect();
        assert!(full_width.starts_with("８９８"));
        assert_eq!(rule().normalise(&full_width).unwrap(), "898000000000042");
        // An ideographic space (U+3000) is whitespace too.
        assert_eq!(rule().normalise("\u{3000}898000000000042\u{3000}").unwrap(), "898000000000042");
    }

    #[test]
    fn each_broken_rule_is_named() {
        assert!(matches!(rule().normalise("   "), Err(IdError::Empty { .. })));
        let short = rule().normalise("89800000000004").unwrap_err();
        assert_eq!(short, IdError::Length { actual: 14, expected: "exactly 15 ASCII digits 0-9".into() });
        assert!(short.to_string().contains("rule `length`"));
        let letters = rule().normalise("89800000000O042").unwrap_err();
        assert_eq!(letters, IdError::Charset { found: 'O', position: 12, allowed: "ASCII digits 0-9" });
        assert!(letters.to_string().contains("rule `charset`"), "{letters}");
        let inner_space = rule().normalise("898000 00000042").unwrap_err();
        assert!(matches!(inner_space, IdError::Charset { found: ' ', position: 7, .. }));
    }

    #[test]
    fn a_length_error_counts_in_the_singular_for_one_character() {
        let one = rule().normalise("8").unwrap_err();
        assert!(one.to_string().starts_with("merchant_id has 1 character after trimming"), "{one}");
        let two = rule().normalise("89").unwrap_err();
        assert!(two.to_string().starts_with("merchant_id has 2 characters after trimming"), "{two}");
    }

    #[test]
    fn huge_ids_are_refused_without_scanning() {
        let huge = "9".repeat(10 * 1024);
        let err = rule().normalise(&huge).unwrap_err();
        assert!(matches!(err, IdError::Length { actual: 10240, .. }));
        // The message does not echo the whole input back.
        assert!(err.to_string().len() < 200);
    }

    #[test]
    fn the_rule_is_configurable() {
        let rule = IdRule { min_length: 6, max_length: 20, charset: Charset::Alphanumeric };
        assert_eq!(rule.normalise(" ＡＢｃ１２３ ").unwrap(), "ABc123");
        assert!(rule.normalise("abc-123").is_err());
        assert!(rule.validate().is_ok());
        assert!(IdRule { min_length: 0, ..rule.clone() }.validate().is_err());
        assert!(IdRule { min_length: 30, ..rule }.validate().is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Every character Rust's `str::trim` removes (Unicode White_Space), so padding built from these
        /// must vanish, including the ideographic space a CJK keyboard types.
        const WHITESPACE: &[char] = &[
            '\t', '\n', '\u{0B}', '\u{0C}', '\r', ' ', '\u{85}', '\u{A0}', '\u{1680}', '\u{2000}', '\u{2001}',
            '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}', '\u{200A}',
            '\u{2028}', '\u{2029}', '\u{202F}', '\u{205F}', '\u{3000}',
        ];

        /// Characters that look blank but are not White_Space, so they must not be trimmed and must be
        /// refused by either charset.
        const LOOKS_BLANK: &[char] = &['\u{0}', '\u{200B}', '\u{180E}', '\u{2060}', '\u{FEFF}', '\u{7F}'];

        /// Non-ASCII characters near what the rule handles: the edges of the full-width block, other
        /// scripts' digits, a character whose case mapping changes length, a 4-byte character.
        const LOOKALIKES: &[char] = &[
            '\u{FF00}',
            '\u{FF5F}',
            '\u{FFE0}',
            '\u{0660}',
            '\u{0669}',
            '\u{06F5}',
            '\u{0966}',
            '\u{00B2}',
            '\u{2460}',
            '\u{1D7CE}',
            '\u{00DF}',
            '\u{0130}',
            '\u{1F600}',
            '\u{10FFFF}',
        ];

        const FOUR_BYTES: &[char] = &['\u{1D7CE}', '\u{1F600}', '\u{10FFFF}'];

        /// The full-width form (U+FF01..U+FF5E) of a printable ASCII character.
        fn full_width(c: char) -> char {
            char::from_u32(c as u32 + 0xFEE0).expect("printable ASCII has a full-width form")
        }

        /// The ASCII character a terminal meant, for ASCII and full-width input; a test-side model of the
        /// folding, so it is written independently of `fold_full_width`.
        fn meant(c: char) -> Option<char> {
            if c.is_ascii() {
                Some(c)
            } else {
                (('\u{FF01}'..='\u{FF5E}').contains(&c)).then(|| char::from_u32(c as u32 - 0xFEE0).expect("ASCII"))
            }
        }

        fn allowed(charset: Charset, c: char) -> bool {
            match charset {
                Charset::Digits => c.is_ascii_digit(),
                Charset::Alphanumeric => c.is_ascii_alphanumeric(),
            }
        }

        /// Every rule `IdRule::validate` accepts, often with the largest allowed maximum: the one where the
        /// scan limit is tightest.
        fn valid_rule() -> impl Strategy<Value = IdRule> {
            let charset = prop_oneof![Just(Charset::Digits), Just(Charset::Alphanumeric)];
            (1..=SCAN_LIMIT / 4, charset).prop_flat_map(|(min_length, charset)| {
                prop_oneof![min_length..=SCAN_LIMIT / 4, Just(SCAN_LIMIT / 4)].prop_map(move |max_length| IdRule {
                    min_length,
                    max_length,
                    charset,
                })
            })
        }

        /// One character a terminal might send, weighted towards the classes the rule treats specially.
        fn id_char() -> impl Strategy<Value = char> {
            prop_oneof![
                4 => prop::char::range('0', '9'),
                2 => prop::sample::select(('A'..='Z').chain('a'..='z').collect::<Vec<_>>()),
                2 => prop::char::range('\u{FF10}', '\u{FF19}'),
                1 => prop::char::range('\u{FF01}', '\u{FF5E}'),
                1 => prop::char::range(' ', '~'),
                2 => prop::sample::select(WHITESPACE),
                1 => prop::sample::select(LOOKS_BLANK),
                1 => prop::sample::select(LOOKALIKES),
                1 => prop::char::range('\u{0}', '\u{1F}'),
                1 => prop::char::range('\u{80}', '\u{9F}'),
                1 => prop::char::range('\u{300}', '\u{36F}'),
                1 => any::<char>(),
            ]
        }

        /// Raw IDs: short mixtures, arbitrary Unicode, lengths around the 256-byte scan limit, and very long
        /// runs with or without padding.
        fn raw_id() -> impl Strategy<Value = String> {
            let padding = || prop::collection::vec(prop::sample::select(WHITESPACE), 0..8);
            prop_oneof![
                4 => prop::collection::vec(id_char(), 0..80).prop_map(String::from_iter),
                2 => prop::collection::vec(any::<char>(), 0..400).prop_map(String::from_iter),
                2 => (id_char(), 60..=260usize, padding(), padding()).prop_map(|(c, n, before, after)| {
                    before.into_iter().chain(std::iter::repeat_n(c, n)).chain(after).collect()
                }),
                // 4-byte characters: 64 of them is exactly the scan limit, so an ID over it is always too
                // long for any valid rule, and one under it must be judged character by character.
                2 => (prop::sample::select(FOUR_BYTES), 56..=72usize, padding(), padding()).prop_map(
                    |(c, n, before, after)| before.into_iter().chain(std::iter::repeat_n(c, n)).chain(after).collect()
                ),
                1 => (id_char(), 0..100_000usize, padding(), padding()).prop_map(|(c, n, before, after)| {
                    before.into_iter().chain(std::iter::repeat_n(c, n)).chain(after).collect()
                }),
            ]
        }

        /// IDs of about the rule's length (one either side), mostly from its charset, some characters
        /// full-width, some not allowed at all: the inputs where acceptance is decided.
        fn nearly_valid_id(rule: &IdRule) -> impl Strategy<Value = String> {
            let pool = charset_pool(rule.charset);
            let c = prop_oneof![
                20 => prop::sample::select(pool.clone()),
                5 => prop::sample::select(pool).prop_map(full_width),
                1 => id_char(),
            ];
            let padding = || prop::collection::vec(prop::sample::select(WHITESPACE), 0..4);
            let length = rule.min_length - 1..=rule.max_length + 1;
            (padding(), prop::collection::vec(c, length), padding())
                .prop_map(|(before, id, after)| before.into_iter().chain(id).chain(after).collect())
        }

        fn charset_pool(charset: Charset) -> Vec<char> {
            ('0'..='9').chain('A'..='Z').chain('a'..='z').filter(|&c| allowed(charset, c)).collect()
        }

        /// A rule and an ID it accepts, written as the ASCII ID and as a terminal might send it: some
        /// characters full-width, whitespace (possibly a lot of multi-byte whitespace) on either side.
        fn padded_valid_id() -> impl Strategy<Value = (IdRule, String, String)> {
            valid_rule().prop_flat_map(|rule| {
                let typed_wide = (prop::sample::select(charset_pool(rule.charset)), any::<bool>());
                let id = prop::collection::vec(typed_wide, rule.min_length..=rule.max_length);
                let padding = || prop::collection::vec(prop::sample::select(WHITESPACE), 0..200);
                (Just(rule), id, padding(), padding()).prop_map(|(rule, id, before, after)| {
                    let ascii: String = id.iter().map(|&(c, _)| c).collect();
                    let typed = id.iter().map(|&(c, wide)| if wide { full_width(c) } else { c });
                    let raw = before.into_iter().chain(typed).chain(after).collect();
                    (rule, ascii, raw)
                })
            })
        }

        #[test]
        fn the_whitespace_list_is_what_trim_removes() {
            let trimmed: Vec<char> =
                (0..=u32::from(char::MAX)).filter_map(char::from_u32).filter(|c| c.is_whitespace()).collect();
            assert_eq!(trimmed, WHITESPACE);
            assert!(!LOOKS_BLANK.iter().any(|c| c.is_whitespace()));
        }

        proptest! {
            // Default case count (256, or PROPTEST_CASES) so a long local run needs no code change.

            #[test]
            fn normalise_accepts_only_what_the_rule_allows(
                (rule, raw) in valid_rule().prop_flat_map(|rule| {
                    let raw = prop_oneof![1 => raw_id(), 2 => nearly_valid_id(&rule)];
                    (Just(rule), raw)
                })
            ) {
                prop_assert!(rule.validate().is_ok(), "strategy made a rule config validation refuses: {rule:?}");
                let trimmed: Vec<char> = raw.trim().chars().collect();
                match rule.normalise(&raw) {
                    Ok(id) => {
                        let length = id.chars().count();
                        prop_assert!((rule.min_length..=rule.max_length).contains(&length), "{id:?} for {rule:?}");
                        prop_assert!(id.chars().all(|c| allowed(rule.charset, c)), "{id:?} for {rule:?}");
                        // Nothing dropped or invented: each character is the one typed, or its full-width
                        // form folded.
                        prop_assert_eq!(trimmed.len(), length);
                        for (typed, got) in trimmed.iter().zip(id.chars()) {
                            prop_assert_eq!(meant(*typed), Some(got));
                        }
                        // Idempotent, and a normal ID borrows (the hit path must not allocate).
                        let again = rule.normalise(&id);
                        prop_assert!(matches!(again, Ok(Cow::Borrowed(same)) if same == id), "{id:?} -> {again:?}");
                    }
                    Err(err) => {
                        let text = err.to_string();
                        prop_assert!(text.starts_with("merchant_id "), "{text}");
                        // The message goes back to the terminal: bounded, never the whole input.
                        prop_assert!(text.len() < 200, "{} bytes for a {}-byte input", text.len(), raw.len());
                        match err {
                            IdError::Empty { .. } => {
                                prop_assert!(trimmed.is_empty());
                                prop_assert!(text.contains("is empty"), "{text}");
                            }
                            IdError::Length { actual, .. } => {
                                prop_assert!(!trimmed.is_empty());
                                prop_assert_eq!(actual, trimmed.len());
                                prop_assert!(!(rule.min_length..=rule.max_length).contains(&actual));
                                prop_assert!(text.contains("rule `length`"), "{text}");
                            }
                            IdError::Charset { found, position, .. } => {
                                prop_assert!((rule.min_length..=rule.max_length).contains(&trimmed.len()));
                                prop_assert!((1..=trimmed.len()).contains(&position), "position {position}");
                                // The first offending character, reported as folded.
                                let typed = trimmed[position - 1];
                                prop_assert_eq!(meant(typed).unwrap_or(typed), found);
                                prop_assert!(!allowed(rule.charset, found));
                                for &before in &trimmed[..position - 1] {
                                    prop_assert!(meant(before).is_some_and(|c| allowed(rule.charset, c)));
                                }
                                prop_assert!(text.contains("rule `charset`"), "{text}");
                            }
                        }
                    }
                }
            }

            #[test]
            fn a_valid_id_in_whitespace_normalises_to_itself((rule, ascii, raw) in padded_valid_id()) {
                prop_assert_eq!(rule.normalise(&raw), Ok(Cow::Borrowed(ascii.as_str())));
                // Widening the charset never refuses what the narrower one accepted.
                let wider = IdRule { charset: Charset::Alphanumeric, ..rule.clone() };
                prop_assert_eq!(wider.normalise(&raw), Ok(Cow::Borrowed(ascii.as_str())));
            }
        }
    }
}
