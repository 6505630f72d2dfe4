//! The change decoder: one `merchant_edge.change` logical message (written by the trigger of
//! deploy/postgres/schema.sql) into the change it numbers. The message is JSON:
//! `{"seq": N, "kind": "U" | "D", "row": <the row as stored, to_jsonb>}` (the new row for an upsert,
//! the old one for a delete). Mapped columns are read by name, so a column added by `ALTER TABLE`
//! changes nothing, and a mapped one dropped or renamed makes the row unservable, never the stream
//! stall.
use serde::Deserialize;
use serde_json::{Map, Value};

use super::config::ColumnsConfig;
use super::row::{servable_id, Fields, RowProblem};
use crate::merchant_id::IdRule;
use crate::pb::Merchant;

/// The prefix of the trigger's messages.
pub const CHANGE_PREFIX: &str = "merchant_edge.change";

/// A decoded change.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedChange {
    /// Its place in the database's numbering.
    pub sequence: u64,
    /// What the change did.
    pub content: ChangeContent,
}

/// What a numbered change did.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeContent {
    /// The merchant now is this.
    Upsert(Merchant),
    /// The merchant was deleted.
    Delete {
        /// Its ID.
        merchant_id: String,
    },
    /// The row the change left cannot be served: edges are told to forget the ID (a delete), which
    /// keeps the sequence contiguous and stops them serving an older version of it.
    Unservable(RowProblem),
}

/// A message that is not a change at all (no number to place it by).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {CHANGE_PREFIX} message is malformed ({0}); was it written by deploy/postgres/schema.sql's trigger?")]
pub struct MalformedChange(String);

#[derive(Deserialize)]
struct Envelope {
    seq: u64,
    kind: String,
    row: Map<String, Value>,
}

/// Decodes one message's content.
pub fn decode(content: &[u8], columns: &ColumnsConfig, rule: &IdRule) -> Result<DecodedChange, MalformedChange> {
    let envelope: Envelope = serde_json::from_slice(content).map_err(|e| MalformedChange(e.to_string()))?;
    let row = RowImage { row: &envelope.row, columns };
    let content = match envelope.kind.as_str() {
        "U" => match row.fields().and_then(|fields| fields.into_merchant(rule)) {
            Ok(merchant) => ChangeContent::Upsert(merchant),
            Err(problem) => ChangeContent::Unservable(problem),
        },
        "D" => match row.id().and_then(|id| servable_id(id, rule)) {
            Ok(merchant_id) => ChangeContent::Delete { merchant_id },
            Err(problem) => ChangeContent::Unservable(problem),
        },
        other => return Err(MalformedChange(format!("kind {other:?} is neither \"U\" nor \"D\""))),
    };
    Ok(DecodedChange { sequence: envelope.seq, content })
}

/// A row as `to_jsonb` wrote it, read through the column mapping.
struct RowImage<'a> {
    row: &'a Map<String, Value>,
    columns: &'a ColumnsConfig,
}

impl RowImage<'_> {
    fn column(&self, column: &str, id: &str) -> Result<&Value, RowProblem> {
        self.row.get(column).ok_or_else(|| RowProblem::MissingColumn { id: id.to_owned(), column: column.to_owned() })
    }

    /// The ID as SQL's `::text` would give it (an integer ID column is written as a JSON number).
    fn id(&self) -> Result<String, RowProblem> {
        let column = &self.columns.merchant_id;
        match self.column(column, "")? {
            Value::String(text) => Ok(text.clone()),
            Value::Number(number) => Ok(number.to_string()),
            other => Err(bad_value("", column, other)),
        }
    }

    /// A text column as SQL's `::text` would give it; NULL reads as empty.
    fn text(&self, column: &str, id: &str) -> Result<String, RowProblem> {
        match self.column(column, id)? {
            Value::String(text) => Ok(text.clone()),
            Value::Number(number) => Ok(number.to_string()),
            Value::Bool(flag) => Ok(flag.to_string()),
            Value::Null => Ok(String::new()),
            other => Err(bad_value(id, column, other)),
        }
    }

    fn fields(&self) -> Result<Fields, RowProblem> {
        let columns = self.columns;
        let merchant_id = self.id()?;
        let id = merchant_id.as_str();
        let status = match self.column(&columns.status, id)? {
            Value::Null => None,
            Value::String(text) => Some(text.clone()),
            other => Some(other.to_string()),
        };
        let version = match self.column(&columns.version, id)? {
            Value::Number(number) => {
                number.as_i64().ok_or_else(|| bad_value(id, &columns.version, &Value::Number(number.clone())))?
            }
            other => return Err(bad_value(id, &columns.version, other)),
        };
        let updated_at_micros = if columns.updated_at.is_empty() {
            None
        } else {
            match self.column(&columns.updated_at, id)? {
                // `infinity`, or a zone offset with seconds: no time the contract can carry.
                Value::String(text) => rfc3339_micros(text),
                Value::Null => None,
                other => return Err(bad_value(id, &columns.updated_at, other)),
            }
        };
        Ok(Fields {
            name: self.text(&columns.name, id)?,
            mcc: self.text(&columns.mcc, id)?,
            city: self.text(&columns.city, id)?,
            status,
            version,
            updated_at_micros,
            merchant_id,
        })
    }
}

fn bad_value(id: &str, column: &str, found: &Value) -> RowProblem {
    let found = match found {
        Value::Null => "NULL".to_owned(),
        Value::Bool(_) => "a boolean".to_owned(),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the text {text:?}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    };
    RowProblem::BadValue { id: id.to_owned(), column: column.to_owned(), found }
}

/// Microseconds since the Unix epoch of a timestamptz as `to_jsonb` writes it (RFC 3339 with the
/// writer's zone offset).
fn rfc3339_micros(text: &str) -> Option<i64> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core_pg::row::SkipReason;
    use crate::pb::MerchantStatus;

    fn decode_default(json: &str) -> Result<DecodedChange, MalformedChange> {
        decode(json.as_bytes(), &ColumnsConfig::default(), &IdRule::default())
    }

    const UPSERT: &str = r#"{"seq": 12, "kind": "U", "row": {"mcc": "5411", "city": "Wuhan", "name": "Shop",
        "status": "PENDING_REVIEW", "version": 11, "updated_at": "2026-12-04T18:11:40.659644+08:00",
        "merchant_id": "898000000000042", "added_by_alter_table": [1, 2]}}"#;

    #[test]
    fn an_upsert_carries_the_row_as_stored() {
        let change = decode_default(UPSERT).unwrap();
        assert_eq!(change.sequence, 12);
        let ChangeContent::Upsert(merchant) = change.content else { panic!("an upsert: {change:?}") };
        assert_eq!(merchant.merchant_id, "898000000000042");
        assert_eq!(merchant.status, MerchantStatus::PendingReview as i32);
        assert_eq!(merchant.version, 11);
        // 18:11:40.659644 at +08:00 is 10:11:40.659644 UTC.
        let at = merchant.updated_at.unwrap();
        assert_eq!((at.seconds % 86_400, at.nanos), (10 * 3600 + 11 * 60 + 40, 659_644_000));
    }

    #[test]
    fn a_delete_needs_only_the_id() {
        let change = decode_default(r#"{"seq": 3, "kind": "D", "row": {"merchant_id": "898000000000042"}}"#).unwrap();
        assert_eq!(change.content, ChangeContent::Delete { merchant_id: "898000000000042".into() });
    }

    #[test]
    fn unservable_rows_keep_their_number_and_say_why() {
        let unknown = UPSERT.replace("PENDING_REVIEW", "FROZEN");
        let dropped = UPSERT.replace("\"city\"", "\"town\"");
        let bad_id = UPSERT.replace("898000000000042", "8980000000000 42");
        let text_version = UPSERT.replace("\"version\": 11", "\"version\": \"11\"");
        for (json, reason) in [
            (unknown, SkipReason::UnknownStatus),
            (dropped, SkipReason::MissingColumn),
            (bad_id, SkipReason::InvalidId),
            (text_version, SkipReason::BadValue),
        ] {
            let change = decode_default(&json).unwrap();
            assert_eq!(change.sequence, 12);
            let ChangeContent::Unservable(problem) = change.content else { panic!("unservable: {json}") };
            assert_eq!(problem.reason(), reason, "{problem}");
        }
    }

    #[test]
    fn a_mapped_table_is_read_by_its_own_column_names() {
        let columns = ColumnsConfig {
            merchant_id: "mid".into(),
            name: "trading_name".into(),
            mcc: "category".into(),
            city: "town".into(),
            status: "state".into(),
            version: "row_version".into(),
            updated_at: String::new(),
        };
        let json = r#"{"seq": 1, "kind": "U", "row": {"mid": 898000000000042, "trading_name": null,
            "category": 5411, "town": "Xi'an", "state": "ACTIVE", "row_version": 1}}"#;
        let change = decode(json.as_bytes(), &columns, &IdRule::default()).unwrap();
        let ChangeContent::Upsert(merchant) = change.content else { panic!("an upsert") };
        assert_eq!((merchant.merchant_id.as_str(), merchant.mcc.as_str()), ("898000000000042", "5411"));
        assert_eq!((merchant.name.as_str(), merchant.updated_at), ("", None));
    }

    #[test]
    fn an_infinite_time_is_no_time() {
        let change = decode_default(&UPSERT.replace("2026-12-04T18:11:40.659644+08:00", "infinity")).unwrap();
        let ChangeContent::Upsert(merchant) = change.content else { panic!("an upsert") };
        assert_eq!(merchant.updated_at, None);
    }

    #[test]
    fn messages_that_are_not_changes_are_refused() {
        for json in ["", "{}", "[1]", r#"{"seq": -1, "kind": "U", "row": {}}"#, r#"{"seq": 1, "kind": "X", "row": {}}"#]
        {
            assert!(decode_default(json).is_err(), "{json:?} accepted");
        }
    }
}
