//! What a change notice says, checked before anything is applied. A notice that does not say what the
//! merchant became is refused rather than guessed at: guessing "deleted" would turn a protocol error
//! into "not found".
use crate::pb::{ChangeKind, ChangeNotice, Merchant};

/// What a merchant became at one sequence of the core's history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change<'a> {
    /// The merchant was onboarded or changed, and is now this.
    Upsert(&'a Merchant),
    /// The merchant was deleted.
    Delete,
}

impl<'a> Change<'a> {
    /// The merchant as it now is, `None` once deleted.
    pub fn merchant(self) -> Option<&'a Merchant> {
        match self {
            Self::Upsert(merchant) => Some(merchant),
            Self::Delete => None,
        }
    }
}

/// A notice the edge cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed notice at sequence {sequence}: kind {kind} for {merchant_id:?} with {}",
    match carried { Some(id) => format!("merchant {id:?}"), None => "no merchant".to_owned() }
)]
pub struct MalformedNotice {
    /// The notice's sequence.
    pub sequence: u64,
    /// The change kind it named.
    pub kind: i32,
    /// The merchant ID it named.
    pub merchant_id: String,
    /// The ID of the merchant record the notice carried, if any.
    pub carried: Option<String>,
}

/// Reads what `notice` says its merchant became.
pub fn parse(notice: &ChangeNotice) -> Result<Change<'_>, MalformedNotice> {
    match (ChangeKind::try_from(notice.kind), &notice.merchant) {
        (Ok(ChangeKind::Upsert), Some(merchant)) if merchant.merchant_id == notice.merchant_id => {
            Ok(Change::Upsert(merchant))
        }
        (Ok(ChangeKind::Delete), _) => Ok(Change::Delete),
        _ => Err(MalformedNotice {
            sequence: notice.sequence,
            kind: notice.kind,
            merchant_id: notice.merchant_id.clone(),
            carried: notice.merchant.as_ref().map(|merchant| merchant.merchant_id.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(sequence: u64, id: &str, version: u64) -> ChangeNotice {
        ChangeNotice {
            sequence,
            merchant_id: id.into(),
            kind: ChangeKind::Upsert as i32,
            merchant: Some(Merchant { merchant_id: id.into(), version, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn malformed_notices_are_refused() {
        let id = "898000000000042";
        let without_merchant = ChangeNotice { merchant: None, ..upsert(2, id, 2) };
        let unknown_kind = ChangeNotice { kind: 9, ..upsert(2, id, 2) };
        let other_merchant = upsert(2, "898000000000043", 2);
        let mislabelled = ChangeNotice { merchant_id: id.into(), ..other_merchant };
        for notice in [without_merchant, unknown_kind, mislabelled] {
            let error = parse(&notice).expect_err("refused");
            assert_eq!(error.sequence, 2);
            assert!(error.to_string().starts_with("malformed notice at sequence 2"), "{error}");
        }
    }

    #[test]
    fn upserts_carry_their_merchant_and_deletes_need_none() {
        let notice = upsert(1, "898000000000042", 1);
        assert_eq!(parse(&notice).unwrap().merchant().map(|m| m.version), Some(1));
        let delete = ChangeNotice { kind: ChangeKind::Delete as i32, merchant: None, ..notice };
        assert_eq!(parse(&delete).unwrap(), Change::Delete);
    }
}
