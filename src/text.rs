//! Wording for messages people read: a count with its noun in the singular when there is one
//! ("1 character", "2 characters"), so errors and logs do not read "has 1 characters".

/// `n` and the noun that agrees with it: `singular` when `n` is exactly 1, `plural` otherwise (English
/// uses the plural for 0 too: "0 notices").
pub fn count<N>(n: N, singular: &str, plural: &str) -> String
where
    N: Copy + PartialEq + From<u8> + std::fmt::Display,
{
    let noun = if n == N::from(1) { singular } else { plural };
    format!("{n} {noun}")
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(count(1usize, "character", "characters"), "1 character");
        assert_eq!(count(0usize, "character", "characters"), "0 characters");
        assert_eq!(count(2u64, "notice", "notices"), "2 notices");
        assert_eq!(count(1_000_000u64, "merchant", "merchants"), "1000000 merchants");
        assert_eq!(count(1u32, "change", "changes"), "1 change");
    }
}
