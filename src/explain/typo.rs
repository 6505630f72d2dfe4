//! Typo suggestions: known IDs one keying slip away from the one typed. Instead of comparing the ID with
//! every merchant (a scan of 1,000,000 per call), the few IDs a single slip could have come from are
//! generated (one character wrong, two neighbours swapped, one left out, one extra: about 150 for a
//! 15-digit ID) and each is looked up in the positive store, a hash lookup apiece.
use std::collections::BTreeSet;

/// Suggestions kept at most.
const LIMIT: usize = 5;

/// What a suggestion search found, and what it cost.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Suggestions {
    pub ids: Vec<String>,
    /// Candidate IDs looked up.
    pub candidates: usize,
}

/// Known IDs (by `known`) one slip from `typed`, whose length is within `lengths` and whose characters
/// are in `alphabet`.
pub fn suggest(
    typed: &str,
    alphabet: &[char],
    lengths: std::ops::RangeInclusive<usize>,
    known: impl Fn(&str) -> bool,
) -> Suggestions {
    let chars: Vec<char> = typed.chars().collect();
    let mut candidates = BTreeSet::new();
    for at in 0..chars.len() {
        for &replacement in alphabet.iter().filter(|&&c| c != chars[at]) {
            let mut changed = chars.clone();
            changed[at] = replacement;
            candidates.insert(changed);
        }
        if at + 1 < chars.len() && chars[at] != chars[at + 1] {
            let mut swapped = chars.clone();
            swapped.swap(at, at + 1);
            candidates.insert(swapped);
        }
        let mut shorter = chars.clone();
        shorter.remove(at);
        candidates.insert(shorter);
    }
    for at in 0..=chars.len() {
        for &extra in alphabet {
            let mut longer = chars.clone();
            longer.insert(at, extra);
            candidates.insert(longer);
        }
    }
    let candidates: Vec<String> = candidates
        .into_iter()
        .filter(|candidate| lengths.contains(&candidate.len()) && candidate.iter().all(|c| alphabet.contains(c)))
        .map(|candidate| candidate.into_iter().collect())
        .collect();
    let ids = candidates.iter().filter(|candidate| known(candidate)).take(LIMIT).cloned().collect();
    Suggestions { ids, candidates: candidates.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits() -> Vec<char> {
        ('0'..='9').collect()
    }

    fn suggest_among(typed: &str, known: &[&str]) -> Vec<String> {
        suggest(typed, &digits(), 15..=15, |id| known.contains(&id)).ids
    }

    #[test]
    fn one_slip_of_any_kind_is_found() {
        let known = ["898000000000042", "898000000000043"];
        assert_eq!(suggest_among("898000000000041", &known), ["898000000000042", "898000000000043"], "one wrong");
        assert_eq!(suggest_among("898000000000024", &known), ["898000000000042"], "two swapped");
        assert_eq!(suggest_among("89800000000042", &known), ["898000000000042"], "one left out");
        assert_eq!(suggest_among("8980000000000042", &known), ["898000000000042"], "one extra");
        assert!(suggest_among("898000000000999", &known).is_empty(), "two slips are not suggested");
    }

    #[test]
    fn only_ids_the_rule_allows_are_looked_up() {
        let checked = std::cell::RefCell::new(Vec::new());
        let found = suggest("89800000000004X", &digits(), 15..=15, |id| {
            checked.borrow_mut().push(id.to_owned());
            id == "898000000000042"
        });
        assert_eq!(found.ids, ["898000000000042"]);
        assert!(checked.borrow().iter().all(|id| id.len() == 15 && id.bytes().all(|b| b.is_ascii_digit())));
        assert_eq!(found.candidates, checked.borrow().len());
    }
}
