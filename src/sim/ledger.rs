//! The simulator's system of record: the synthetic base data set, the changes made on top of it, and a
//! bounded history of committed changes with contiguous sequence numbers.
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::SystemTime;

use parking_lot::RwLock;
use tokio::sync::watch;

use super::dataset::{synthetic_id, synthetic_index, synthetic_merchant};
use crate::pb::{ChangeKind, ChangeNotice, Merchant, MerchantStatus};

/// Longest merchant ID the simulator stores; longer ones are refused as a client error.
const MAX_ID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
/// Why the ledger refused a request.
pub enum LedgerError {
    #[error("merchant_id must be 1 to {MAX_ID_LEN} characters")]
    /// The ID is empty or too long.
    BadId,
    #[error("merchant {0} does not exist")]
    /// No such merchant.
    UnknownMerchant(String),
    #[error(
        "after_sequence {requested} is outside the kept history ({oldest_resumable}..={head}): \
         resync from ListMerchants and resume from its as_of_sequence"
    )]
    /// The history asked for is trimmed (or not written yet).
    OutOfHistory {
        /// The sequence asked to resume after.
        requested: u64,
        /// The oldest sequence one may resume after.
        oldest_resumable: u64,
        /// The last sequence.
        head: u64,
    },
}

/// A merchant changed on top of the base data set.
#[derive(Debug, Clone)]
enum Slot {
    Live(Merchant),
    /// Remembers the version so a re-created merchant's version still grows.
    Deleted {
        last_version: u64,
    },
}

struct State {
    changed: BTreeMap<String, Slot>,
    head: u64,
    history: VecDeque<ChangeNotice>,
    merchants: u64,
}

/// One page of the merchant list.
pub struct Page {
    /// The merchants of this page.
    pub merchants: Vec<Merchant>,
    /// The last ID of this page when more may follow.
    pub next_after: Option<String>,
    /// The sequence the snapshot reflects.
    pub as_of_sequence: u64,
}

/// The simulator's merchants: a synthetic base set with changes on top, and their history.
pub struct Ledger {
    base_count: u64,
    history_limit: usize,
    incarnation: String,
    state: RwLock<State>,
    head_tx: watch::Sender<u64>,
}

impl Ledger {
    /// A ledger holding synthetic merchants `0..base_count` at sequence 0, keeping the last
    /// `history_limit` changes for WatchChanges.
    pub fn new(base_count: u64, history_limit: usize) -> Self {
        Self {
            base_count,
            history_limit: history_limit.max(1),
            incarnation: new_incarnation(),
            state: RwLock::new(State {
                changed: BTreeMap::new(),
                head: 0,
                history: VecDeque::new(),
                merchants: base_count,
            }),
            head_tx: watch::Sender::new(0),
        }
    }

    /// This history's incarnation (new at every start).
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// The last change's sequence.
    pub fn head(&self) -> u64 {
        self.state.read().head
    }

    /// How many merchants exist now.
    pub fn merchants(&self) -> u64 {
        self.state.read().merchants
    }

    /// Wakes whoever waits for new changes.
    pub fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    /// The merchant as of now, and the sequence that answer reflects.
    pub fn get(&self, id: &str) -> (Option<Merchant>, u64) {
        let state = self.state.read();
        (self.current(&state, id), state.head)
    }

    fn current(&self, state: &State, id: &str) -> Option<Merchant> {
        match state.changed.get(id) {
            Some(Slot::Live(merchant)) => Some(merchant.clone()),
            Some(Slot::Deleted { .. }) => None,
            None => self.base_index(id).map(synthetic_merchant),
        }
    }

    fn base_index(&self, id: &str) -> Option<u64> {
        synthetic_index(id).filter(|&index| index < self.base_count)
    }

    /// Up to `limit` merchants with IDs greater than `after`, in ID order.
    pub fn page(&self, after: &str, limit: usize) -> Page {
        let state = self.state.read();
        let mut base = self.first_base_index_after(after);
        let mut changed = state.changed.range::<str, _>((Bound::Excluded(after), Bound::Unbounded)).peekable();
        let mut merchants = Vec::with_capacity(limit.min(10_000));
        while merchants.len() < limit {
            let base_id = (base < self.base_count).then(|| synthetic_id(base));
            let (take_base, replaces_base) = match (&base_id, changed.peek()) {
                (None, None) => break,
                (Some(base_id), Some((id, _))) => (id.as_str() > base_id.as_str(), id.as_str() == base_id.as_str()),
                (Some(_), None) => (true, false),
                (None, Some(_)) => (false, false),
            };
            if take_base {
                merchants.push(synthetic_merchant(base));
                base += 1;
                continue;
            }
            if replaces_base {
                base += 1;
            }
            if let Some((_, Slot::Live(merchant))) = changed.next() {
                merchants.push(merchant.clone());
            }
        }
        let more = base < self.base_count || changed.peek().is_some();
        Page {
            next_after: if more { merchants.last().map(|m| m.merchant_id.clone()) } else { None },
            merchants,
            as_of_sequence: state.head,
        }
    }

    /// The smallest base index whose ID sorts after `after` (IDs of one length sort like their index).
    fn first_base_index_after(&self, after: &str) -> u64 {
        let (mut low, mut high) = (0, self.base_count);
        while low < high {
            let mid = low + (high - low) / 2;
            if synthetic_id(mid).as_str() > after {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        low
    }

    /// Creates or changes a merchant; the core assigns the version and commit time.
    pub fn upsert(&self, mut merchant: Merchant) -> Result<ChangeNotice, LedgerError> {
        check_id(&merchant.merchant_id)?;
        if merchant.status == MerchantStatus::Unspecified as i32 {
            merchant.status = MerchantStatus::Active as i32;
        }
        let mut guard = self.state.write();
        let state = &mut *guard;
        let previous_version = match state.changed.get(&merchant.merchant_id) {
            Some(Slot::Live(existing)) => Some(existing.version),
            Some(Slot::Deleted { last_version }) => {
                state.merchants += 1;
                Some(*last_version)
            }
            None => match self.base_index(&merchant.merchant_id) {
                Some(index) => Some(synthetic_merchant(index).version),
                None => {
                    state.merchants += 1;
                    None
                }
            },
        };
        let committed_at = SystemTime::now();
        merchant.version = previous_version.map_or(1, |v| v + 1);
        merchant.updated_at = Some(committed_at.into());
        state.changed.insert(merchant.merchant_id.clone(), Slot::Live(merchant.clone()));
        Ok(self.commit(state, merchant.merchant_id.clone(), ChangeKind::Upsert, Some(merchant), committed_at))
    }

    /// Removes a merchant.
    pub fn delete(&self, id: &str) -> Result<ChangeNotice, LedgerError> {
        check_id(id)?;
        let mut state = self.state.write();
        let existing = self.current(&state, id).ok_or_else(|| LedgerError::UnknownMerchant(id.to_owned()))?;
        state.changed.insert(id.to_owned(), Slot::Deleted { last_version: existing.version });
        state.merchants -= 1;
        Ok(self.commit(&mut state, id.to_owned(), ChangeKind::Delete, None, SystemTime::now()))
    }

    fn commit(
        &self,
        state: &mut State,
        merchant_id: String,
        kind: ChangeKind,
        merchant: Option<Merchant>,
        committed_at: SystemTime,
    ) -> ChangeNotice {
        state.head += 1;
        let notice = ChangeNotice {
            sequence: state.head,
            merchant_id,
            kind: kind as i32,
            merchant,
            committed_at: Some(committed_at.into()),
            incarnation: self.incarnation.clone(),
        };
        if state.history.len() == self.history_limit {
            state.history.pop_front();
        }
        state.history.push_back(notice.clone());
        self.head_tx.send_replace(state.head);
        notice
    }

    /// Up to `limit` changes with sequences greater than `after`, in order. Fails when `after` is older
    /// than the kept history or ahead of the head (a subscriber from an earlier incarnation).
    pub fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<ChangeNotice>, LedgerError> {
        let state = self.state.read();
        let oldest_resumable = state.history.front().map_or(state.head, |n| n.sequence - 1);
        if after < oldest_resumable || after > state.head {
            return Err(LedgerError::OutOfHistory { requested: after, oldest_resumable, head: state.head });
        }
        let skip = (after - oldest_resumable) as usize;
        Ok(state.history.iter().skip(skip).take(limit).cloned().collect())
    }
}

fn check_id(id: &str) -> Result<(), LedgerError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(LedgerError::BadId);
    }
    Ok(())
}

/// A name for this run of the history, distinct across restarts.
fn new_incarnation() -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", nanos, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merchant(id: &str, name: &str) -> Merchant {
        Merchant { merchant_id: id.into(), name: name.into(), ..Default::default() }
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.merchants.iter().map(|m| m.merchant_id.as_str()).collect()
    }

    #[test]
    fn base_merchants_exist_at_sequence_zero() {
        let ledger = Ledger::new(100, 10);
        let (found, seq) = ledger.get("898000000000042");
        assert_eq!(found.unwrap().merchant_id, "898000000000042");
        assert_eq!(seq, 0);
        assert!(ledger.get("898000000000100").0.is_none());
        assert_eq!(ledger.merchants(), 100);
    }

    #[test]
    fn versions_grow_across_change_delete_and_recreate() {
        let ledger = Ledger::new(100, 10);
        let changed = ledger.upsert(merchant("898000000000042", "Renamed")).unwrap();
        assert_eq!((changed.sequence, changed.merchant.unwrap().version), (1, 2));
        let deleted = ledger.delete("898000000000042").unwrap();
        assert_eq!(deleted.kind, ChangeKind::Delete as i32);
        assert!(ledger.get("898000000000042").0.is_none());
        assert_eq!(ledger.merchants(), 99);
        let recreated = ledger.upsert(merchant("898000000000042", "Back")).unwrap();
        assert_eq!(recreated.merchant.unwrap().version, 3);
        let onboarded = ledger.upsert(merchant("898999999999999", "New")).unwrap();
        assert_eq!(onboarded.merchant.as_ref().unwrap().version, 1);
        assert_eq!(onboarded.merchant.unwrap().status, MerchantStatus::Active as i32);
        assert_eq!(ledger.merchants(), 101);
        assert_eq!(ledger.delete("123"), Err(LedgerError::UnknownMerchant("123".into())));
    }

    #[test]
    fn pages_merge_base_and_changes_in_id_order() {
        let ledger = Ledger::new(5, 10);
        ledger.delete("898000000000001").unwrap();
        ledger.upsert(merchant("898000000000002", "Changed")).unwrap();
        ledger.upsert(merchant("1", "Sorts first")).unwrap();
        ledger.upsert(merchant("898000000000002x", "Between 2 and 3")).unwrap();
        ledger.upsert(merchant("9", "Sorts last")).unwrap();
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let page = ledger.page(&after, 2);
            assert_eq!(page.as_of_sequence, 5);
            all.extend(ids(&page).into_iter().map(str::to_owned));
            match page.next_after {
                Some(next) => after = next,
                None => break,
            }
        }
        assert_eq!(
            all,
            ["1", "898000000000000", "898000000000002", "898000000000002x", "898000000000003", "898000000000004", "9"]
        );
        assert_eq!(ledger.page("", 10).merchants[2].name, "Changed");
    }

    #[test]
    fn history_is_contiguous_bounded_and_says_when_too_old() {
        let ledger = Ledger::new(10, 3);
        for i in 0..5 {
            ledger.upsert(merchant(&synthetic_id(i), "x")).unwrap();
        }
        let seqs: Vec<u64> = ledger.changes_after(2, 10).unwrap().iter().map(|n| n.sequence).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert!(ledger.changes_after(5, 10).unwrap().is_empty());
        assert!(matches!(ledger.changes_after(1, 10), Err(LedgerError::OutOfHistory { oldest_resumable: 2, .. })));
        assert!(matches!(ledger.changes_after(6, 10), Err(LedgerError::OutOfHistory { head: 5, .. })));
        assert_eq!(ledger.changes_after(3, 1).unwrap()[0].sequence, 4);
    }
}
