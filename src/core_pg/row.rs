//! One row of the merchants table as a `Merchant`, whichever way it was read: a primary-key read or a
//! listing page (SQL), or a change message from the WAL (the row as JSON). Both paths end in
//! [`Fields::into_merchant`], so a row is servable, or skipped for the same reason, everywhere.
use std::time::{Duration, SystemTime};

use crate::merchant_id::{IdError, IdRule};
use crate::metric_labels::label_values;
use crate::pb::{Merchant, MerchantStatus};

label_values! {
    /// Why a row cannot be served as a merchant (the `reason` of `core_pg_rows_skipped_total`).
    pub SkipReason {
        /// The ID is not in the edge's normal form or breaks its rule.
        InvalidId => "invalid_id",
        /// The status is none of the four the contract knows.
        UnknownStatus => "unknown_status",
        /// A mapped column is not in the row (dropped or renamed by a schema change).
        MissingColumn => "missing_column",
        /// A mapped column holds a value of another type than the mapping needs.
        BadValue => "bad_value",
    }
}

/// Why one row cannot be served. The Display text names the row and what to fix in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowProblem {
    #[error("merchant_id {id:?} cannot be served: {error}")]
    /// The ID is not what edges look up.
    InvalidId {
        /// The ID as stored.
        id: String,
        /// The rule it breaks, or that it is not in normal form.
        error: IdMisfit,
    },
    #[error("merchant {id:?} has status {status:?}; it must be one of ACTIVE, PENDING_REVIEW, SUSPENDED, CLOSED")]
    /// The status column holds something else.
    UnknownStatus {
        /// The merchant.
        id: String,
        /// The status as stored (`NULL` for none).
        status: String,
    },
    #[error("a row of merchant {id:?} has no column {column:?} (renamed or dropped?); fix [postgres.columns]")]
    /// A mapped column is missing from the row.
    MissingColumn {
        /// The merchant, when its ID column is there.
        id: String,
        /// The column's name.
        column: String,
    },
    #[error("merchant {id:?}: column {column:?} holds {found}, not what [postgres.columns] maps it as")]
    /// A mapped column has a value of the wrong type.
    BadValue {
        /// The merchant, when its ID column is there.
        id: String,
        /// The column's name.
        column: String,
        /// What it holds.
        found: String,
    },
}

/// How a stored ID misses what edges look up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdMisfit {
    #[error("{0}")]
    /// It breaks the ID rule.
    Rule(IdError),
    #[error("it is not in normal form (edges look up {0:?}); store IDs trimmed, in ASCII")]
    /// It normalises to another ID, so no lookup would ever find it as stored.
    NotNormal(String),
}

impl RowProblem {
    /// The metric label of the problem.
    pub fn reason(&self) -> SkipReason {
        match self {
            Self::InvalidId { .. } => SkipReason::InvalidId,
            Self::UnknownStatus { .. } => SkipReason::UnknownStatus,
            Self::MissingColumn { .. } => SkipReason::MissingColumn,
            Self::BadValue { .. } => SkipReason::BadValue,
        }
    }

    /// The ID of the row the problem is in, as stored (empty when the ID column itself is missing).
    pub fn merchant_id(&self) -> &str {
        match self {
            Self::InvalidId { id, .. }
            | Self::UnknownStatus { id, .. }
            | Self::MissingColumn { id, .. }
            | Self::BadValue { id, .. } => id,
        }
    }
}

/// A row's mapped columns, read but not yet checked. Text columns that are NULL read as empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fields {
    /// The ID as stored.
    pub merchant_id: String,
    /// Trading name.
    pub name: String,
    /// Merchant category code.
    pub mcc: String,
    /// City.
    pub city: String,
    /// Status as stored; `None` for NULL.
    pub status: Option<String>,
    /// The version the trigger stamped.
    pub version: i64,
    /// `updated_at` in microseconds since the Unix epoch; `None` for NULL, infinite or unmapped.
    pub updated_at_micros: Option<i64>,
}

/// The status as the table stores it.
pub fn status_text(status: MerchantStatus) -> Option<&'static str> {
    match status {
        MerchantStatus::Active => Some("ACTIVE"),
        MerchantStatus::PendingReview => Some("PENDING_REVIEW"),
        MerchantStatus::Suspended => Some("SUSPENDED"),
        MerchantStatus::Closed => Some("CLOSED"),
        MerchantStatus::Unspecified => None,
    }
}

fn status_from_text(text: &str) -> Option<MerchantStatus> {
    [MerchantStatus::Active, MerchantStatus::PendingReview, MerchantStatus::Suspended, MerchantStatus::Closed]
        .into_iter()
        .find(|status| status_text(*status) == Some(text))
}

/// Whether `id` is exactly what an edge would look up under `rule`.
pub fn check_id(id: &str, rule: &IdRule) -> Result<(), IdMisfit> {
    match rule.normalise(id) {
        Ok(normal) if normal == id => Ok(()),
        Ok(normal) => Err(IdMisfit::NotNormal(normal.into_owned())),
        Err(error) => Err(IdMisfit::Rule(error)),
    }
}

/// `id`, when it is exactly what an edge would look up under `rule`.
pub fn servable_id(id: String, rule: &IdRule) -> Result<String, RowProblem> {
    match check_id(&id, rule) {
        Ok(()) => Ok(id),
        Err(error) => Err(RowProblem::InvalidId { id, error }),
    }
}

impl Fields {
    /// The merchant these fields describe, or why it cannot be served.
    pub fn into_merchant(self, rule: &IdRule) -> Result<Merchant, RowProblem> {
        let merchant_id = servable_id(self.merchant_id, rule)?;
        let Some(status) = self.status.as_deref().and_then(status_from_text) else {
            let status = self.status.unwrap_or_else(|| "NULL".to_owned());
            return Err(RowProblem::UnknownStatus { id: merchant_id, status });
        };
        let version = u64::try_from(self.version).map_err(|_| RowProblem::BadValue {
            id: merchant_id.clone(),
            column: "version".into(),
            found: format!("the negative number {}", self.version),
        })?;
        Ok(Merchant {
            merchant_id,
            name: self.name,
            mcc: self.mcc,
            city: self.city,
            status: status as i32,
            version,
            updated_at: self.updated_at_micros.and_then(timestamp_of_micros),
        })
    }
}

/// A protobuf timestamp from microseconds since the Unix epoch.
pub fn timestamp_of_micros(micros: i64) -> Option<prost_types::Timestamp> {
    let seconds = micros.div_euclid(1_000_000);
    let nanos = i32::try_from(micros.rem_euclid(1_000_000) * 1_000).ok()?;
    Some(prost_types::Timestamp { seconds, nanos })
}

/// PostgreSQL's epoch (2000-01-01 UTC) in Unix microseconds: replication messages count from it.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A replication message's time (microseconds since 2000-01-01) as a protobuf timestamp.
pub fn timestamp_of_postgres_micros(micros: i64) -> Option<prost_types::Timestamp> {
    timestamp_of_micros(micros.checked_add(POSTGRES_EPOCH_UNIX_MICROS)?)
}

/// A replication message's time as a `SystemTime`, for delays.
pub fn system_time_of_postgres_micros(micros: i64) -> Option<SystemTime> {
    let unix = u64::try_from(micros.checked_add(POSTGRES_EPOCH_UNIX_MICROS)?).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(unix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(id: &str, status: Option<&str>) -> Fields {
        Fields {
            merchant_id: id.into(),
            name: "Shop".into(),
            mcc: "5411".into(),
            city: "Wuhan".into(),
            status: status.map(str::to_owned),
            version: 7,
            updated_at_micros: Some(1_700_000_000_123_456),
        }
    }

    #[test]
    fn a_servable_row_becomes_the_merchant() {
        let merchant = fields("898000000000042", Some("SUSPENDED")).into_merchant(&IdRule::default()).unwrap();
        assert_eq!(merchant.status, MerchantStatus::Suspended as i32);
        assert_eq!(merchant.version, 7);
        assert_eq!(merchant.updated_at, Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 123_456_000 }));
    }

    #[test]
    fn every_status_round_trips_through_its_text() {
        for status in
            [MerchantStatus::Active, MerchantStatus::PendingReview, MerchantStatus::Suspended, MerchantStatus::Closed]
        {
            assert_eq!(status_from_text(status_text(status).unwrap()), Some(status));
        }
        assert_eq!(status_text(MerchantStatus::Unspecified), None);
    }

    #[test]
    fn rows_edges_could_not_serve_say_why() {
        let rule = IdRule::default();
        let unknown = fields("898000000000042", Some("BLOCKED")).into_merchant(&rule).unwrap_err();
        assert_eq!(unknown.reason(), SkipReason::UnknownStatus);
        assert!(unknown.to_string().contains("\"BLOCKED\""), "{unknown}");
        let null = fields("898000000000042", None).into_merchant(&rule).unwrap_err();
        assert!(null.to_string().contains("NULL"), "{null}");
        let short = fields("89800000000004", Some("ACTIVE")).into_merchant(&rule).unwrap_err();
        assert_eq!((short.reason(), short.merchant_id()), (SkipReason::InvalidId, "89800000000004"));
        let padded = fields(" 898000000000042", Some("ACTIVE")).into_merchant(&rule).unwrap_err();
        assert!(padded.to_string().contains("not in normal form"), "{padded}");
        let negative = Fields { version: -1, ..fields("898000000000042", Some("ACTIVE")) };
        assert_eq!(negative.into_merchant(&rule).unwrap_err().reason(), SkipReason::BadValue);
    }

    #[test]
    fn times_before_the_epoch_keep_positive_nanos() {
        assert_eq!(timestamp_of_micros(-1), Some(prost_types::Timestamp { seconds: -1, nanos: 999_999_000 }));
        assert_eq!(timestamp_of_postgres_micros(0), Some(prost_types::Timestamp { seconds: 946_684_800, nanos: 0 }));
        assert_eq!(timestamp_of_postgres_micros(i64::MAX), None);
    }
}
