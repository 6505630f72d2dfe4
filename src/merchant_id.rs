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
    Empty { expected: String },
    #[error("merchant_id has {actual} characters after trimming whitespace; rule `length`: it must be {expected}")]
    Length { actual: usize, expected: String },
    #[error("merchant_id has {found:?} at position {position}; rule `charset`: it may contain only {allowed}")]
    Charset { found: char, position: usize, allowed: &'static str },
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
}
