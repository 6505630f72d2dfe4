//! The table as core-pg reads and writes it: the mapped columns checked at start (every problem named
//! at once, with what to run), and the SQL built from them once.
use tokio_postgres::Client;

use super::config::PostgresConfig;
use super::row::Fields;

/// The triggers merchant_edge.track installs, which number every change.
const TRIGGERS: [&str; 4] =
    ["merchant_edge_stamp", "merchant_edge_number", "merchant_edge_record_head", "merchant_edge_no_truncate"];

/// The database cannot be served as it is: everything that is missing, at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the database is not ready for core-pg:\n  - {}\n(deploy/postgres/schema.sql sets up the default `merchants` table; \
     for a table of your own, map its columns in [postgres.columns] and run \
     SELECT merchant_edge.track('<table>', '<id column>', '<version column>', '<updated_at column or empty>'))",
    .problems.join("\n  - ")
)]
pub struct SchemaProblems {
    /// One line per problem, naming what to add or change.
    pub problems: Vec<String>,
}

/// Quotes an identifier for SQL.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The checked mapping: the table, and the SQL core-pg runs against it.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The table, quoted and schema-qualified as configured.
    pub table: String,
    select_list: String,
    id_type: String,
    /// Casts for the written columns, in the order name, mcc, city, status.
    written_types: [String; 4],
    columns: [String; 5],
}

/// What the catalog says about one column.
struct Column {
    name: String,
    type_name: String,
}

impl Mapping {
    /// Checks the database against `config` and builds the SQL; fails with every problem found.
    pub async fn verify(client: &Client, config: &PostgresConfig) -> Result<Self, VerifyError> {
        let mut problems = Vec::new();
        let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
        if wal_level != "logical" {
            problems.push(format!(
                "wal_level is {wal_level:?}: set wal_level = logical in postgresql.conf and restart PostgreSQL"
            ));
        }
        let may_replicate: bool = client
            .query_one("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user", &[])
            .await?
            .get(0);
        if !may_replicate {
            problems.push("the role core-pg connects as lacks REPLICATION: ALTER ROLE <role> REPLICATION".into());
        }
        let publication =
            client.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&config.publication]).await?;
        if publication.is_none() {
            problems.push(format!(
                "no publication {:?}: CREATE PUBLICATION {}",
                config.publication,
                quote(&config.publication)
            ));
        }
        let table = config.table.split('.').map(quote).collect::<Vec<_>>().join(".");
        let oid: Option<u32> =
            client.query_one("SELECT to_regclass($1)::oid", &[&table]).await?.get::<_, Option<u32>>(0);
        let Some(oid) = oid else {
            problems.push(format!("no table {:?} ([postgres] table)", config.table));
            return Err(SchemaProblems { problems }.into());
        };
        let numbered: bool =
            client.query_one("SELECT to_regclass('merchant_edge.head') IS NOT NULL", &[]).await?.get(0);
        let tracked = if numbered {
            client
                .query_opt("SELECT tracked_table::oid FROM merchant_edge.head", &[])
                .await?
                .map(|row| row.get::<_, Option<u32>>(0))
        } else {
            None
        };
        match tracked {
            Some(Some(tracked)) if tracked == oid => {}
            _ if !numbered => problems.push("no merchant_edge.head: run deploy/postgres/schema.sql once".into()),
            _ => problems.push(format!(
                "merchant_edge.head does not number the changes of {:?}: SELECT merchant_edge.track(...) for it",
                config.table
            )),
        }
        let columns = client
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod), attnum FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&oid],
            )
            .await?;
        let find = |name: &str| {
            columns
                .iter()
                .find(|row| row.get::<_, String>(0) == name)
                .map(|row| (Column { name: row.get(0), type_name: row.get(1) }, row.get::<_, i16>(2)))
        };
        let mut mapped = Vec::new();
        for (key, name) in config.columns.named() {
            match find(name) {
                Some(column) => mapped.push((key, column)),
                None => problems.push(format!("table {:?} has no column {name:?} ({key})", config.table)),
            }
        }
        for (key, (column, _)) in &mapped {
            let wanted = match *key {
                "postgres.columns.version" => ["bigint", "integer", "smallint"].as_slice(),
                "postgres.columns.updated_at" => ["timestamp with time zone"].as_slice(),
                _ => continue,
            };
            if !wanted.contains(&column.type_name.as_str()) {
                problems.push(format!(
                    "column {:?} ({key}) is {}; it must be {}",
                    column.name,
                    column.type_name,
                    wanted.join(" or ")
                ));
            }
        }
        if let Some((_, attnum)) = mapped.iter().find(|(key, _)| *key == "postgres.columns.merchant_id").map(|(_, c)| c)
        {
            let unique = client
                .query_opt(
                    "SELECT 1 FROM pg_index WHERE indrelid = $1 AND indisunique AND indnatts = 1 \
                     AND indkey[0] = $2 AND indpred IS NULL",
                    &[&oid, attnum],
                )
                .await?;
            if unique.is_none() {
                problems.push(format!(
                    "column {:?} is neither the primary key nor unique: ALTER TABLE {table} ADD PRIMARY KEY ({})",
                    config.columns.merchant_id,
                    quote(&config.columns.merchant_id)
                ));
            }
        }
        problems.extend(check_triggers(client, oid, config).await?);
        if !problems.is_empty() {
            return Err(SchemaProblems { problems }.into());
        }
        let type_of = |key: &str| {
            mapped.iter().find(|(k, _)| *k == key).map(|(_, (column, _))| column.type_name.clone()).expect("verified")
        };
        Ok(Self::new(
            table,
            config,
            type_of("postgres.columns.merchant_id"),
            [
                type_of("postgres.columns.name"),
                type_of("postgres.columns.mcc"),
                type_of("postgres.columns.city"),
                type_of("postgres.columns.status"),
            ],
        ))
    }

    fn new(table: String, config: &PostgresConfig, id_type: String, written_types: [String; 4]) -> Self {
        let columns = &config.columns;
        let text = |name: &str| format!("m.{}::text", quote(name));
        let updated_at = if columns.updated_at.is_empty() {
            "NULL::int8".to_owned()
        } else {
            let column = format!("m.{}", quote(&columns.updated_at));
            format!("CASE WHEN isfinite({column}) THEN (extract(epoch FROM {column}) * 1000000)::int8 END")
        };
        let select_list = [
            text(&columns.merchant_id),
            text(&columns.name),
            text(&columns.mcc),
            text(&columns.city),
            text(&columns.status),
            format!("m.{}::int8", quote(&columns.version)),
            updated_at,
        ]
        .join(", ");
        let quoted =
            [&columns.merchant_id, &columns.name, &columns.mcc, &columns.city, &columns.status].map(|c| quote(c));
        Self { table, select_list, id_type, written_types, columns: quoted }
    }

    /// The id as a query parameter: sent as text, cast to the column's type.
    fn id_param(&self, n: usize) -> String {
        format!("${n}::text::{}", self.id_type)
    }

    /// One merchant and the sequence the read reflects, in one snapshot: `$1` the ID. Columns: the
    /// head, then [`Self::fields`]'s (all NULL when there is no such merchant).
    pub fn get_sql(&self) -> String {
        format!(
            "SELECT h.last_sequence, {} FROM merchant_edge.head h LEFT JOIN {} m ON m.{} = {}",
            self.select_list,
            self.table,
            self.columns[0],
            self.id_param(1)
        )
    }

    /// The first page of a listing: `$1` the page size.
    pub fn first_page_sql(&self) -> String {
        format!("SELECT {} FROM {} m ORDER BY m.{} LIMIT $1", self.select_list, self.table, self.columns[0])
    }

    /// A later page: `$1` the page size, `$2` the last ID of the page before.
    pub fn next_page_sql(&self) -> String {
        format!(
            "SELECT {} FROM {} m WHERE m.{id} > {} ORDER BY m.{id} LIMIT $1",
            self.select_list,
            self.table,
            self.id_param(2),
            id = self.columns[0]
        )
    }

    /// Creates or changes a merchant: `$1` id, `$2` name, `$3` mcc, `$4` city, `$5` status. Returns
    /// the row as stored ([`Self::fields`]).
    pub fn upsert_sql(&self) -> String {
        let [id, name, mcc, city, status] = &self.columns;
        let values = self.written_types.iter().enumerate().map(|(i, ty)| format!("${}::text::{ty}", i + 2));
        let values = std::iter::once(self.id_param(1)).chain(values).collect::<Vec<_>>().join(", ");
        format!(
            "INSERT INTO {table} AS m ({id}, {name}, {mcc}, {city}, {status}) VALUES ({values}) \
             ON CONFLICT ({id}) DO UPDATE SET {name} = EXCLUDED.{name}, {mcc} = EXCLUDED.{mcc}, \
             {city} = EXCLUDED.{city}, {status} = EXCLUDED.{status} RETURNING {}",
            self.select_list,
            table = self.table,
        )
    }

    /// Removes a merchant: `$1` the ID.
    pub fn delete_sql(&self) -> String {
        format!("DELETE FROM {} m WHERE m.{} = {}", self.table, self.columns[0], self.id_param(1))
    }

    /// How many merchants the table holds.
    pub fn count_sql(&self) -> String {
        format!("SELECT count(*) FROM {}", self.table)
    }

    /// The mapped columns of a row read with this mapping's select list, starting at column `at`;
    /// `None` when they are NULL (a LEFT JOIN that found no merchant).
    pub fn fields(row: &tokio_postgres::Row, at: usize) -> Option<Fields> {
        let merchant_id: String = row.get::<_, Option<String>>(at)?;
        let text = |i: usize| row.get::<_, Option<String>>(at + i).unwrap_or_default();
        Some(Fields {
            merchant_id,
            name: text(1),
            mcc: text(2),
            city: text(3),
            status: row.get(at + 4),
            // NULL is no version: the trigger always stamps one, so the row was written without it.
            version: row.get::<_, Option<i64>>(at + 5).unwrap_or(-1),
            updated_at_micros: row.get(at + 6),
        })
    }
}

/// Why the start-time check could not pass.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    /// The database answered, and something is missing.
    Problems(#[from] SchemaProblems),
    #[error("cannot check the database: {0}")]
    /// The check itself failed (connection, permissions).
    Query(#[from] tokio_postgres::Error),
}

/// Problems with the numbering triggers of table `oid`: missing, disabled, or installed for other
/// columns than the config maps.
async fn check_triggers(
    client: &Client,
    oid: u32,
    config: &PostgresConfig,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT tgname::text, tgenabled::text, encode(tgargs, 'escape') FROM pg_trigger \
             WHERE tgrelid = $1 AND tgname = ANY($2)",
            &[&oid, &TRIGGERS.as_slice()],
        )
        .await?;
    let mut problems = Vec::new();
    for trigger in TRIGGERS {
        let Some(row) = rows.iter().find(|row| row.get::<_, String>(0) == trigger) else {
            problems.push(format!(
                "table {:?} has no trigger {trigger}: run SELECT merchant_edge.track(...)",
                config.table
            ));
            continue;
        };
        if row.get::<_, String>(1) == "D" {
            problems.push(format!("trigger {trigger} is disabled: ALTER TABLE ... ENABLE ALWAYS TRIGGER {trigger}"));
        }
        let columns = &config.columns;
        let expected = match trigger {
            "merchant_edge_stamp" => {
                vec![columns.merchant_id.as_str(), columns.version.as_str(), columns.updated_at.as_str()]
            }
            "merchant_edge_number" => vec![columns.merchant_id.as_str()],
            _ => continue,
        };
        // pg_trigger.tgargs holds each argument followed by a NUL, which `escape` shows as \000.
        let installed = row.get::<_, String>(2);
        let installed: Vec<&str> = installed.split("\\000").filter(|arg| !arg.is_empty()).collect();
        let expected: Vec<&str> = expected.into_iter().filter(|arg| !arg.is_empty()).collect();
        if installed != expected {
            problems.push(format!(
                "trigger {trigger} was installed for columns {installed:?} but [postgres.columns] maps {expected:?}: \
                 run SELECT merchant_edge.track(...) with the mapped columns"
            ));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_so_any_name_is_safe() {
        assert_eq!(quote("merchants"), "\"merchants\"");
        assert_eq!(quote("odd\"name"), "\"odd\"\"name\"");
    }

    #[test]
    fn the_sql_reads_every_mapped_column_as_the_row_decoder_expects() {
        let mut config = PostgresConfig::default();
        config.columns.merchant_id = "mid".into();
        config.columns.updated_at = String::new();
        let mapping = Mapping::new(
            "\"bank\".\"mm\"".into(),
            &config,
            "bigint".into(),
            ["text".into(), "integer".into(), "text".into(), "text".into()],
        );
        let get = mapping.get_sql();
        assert!(get.contains("LEFT JOIN \"bank\".\"mm\" m ON m.\"mid\" = $1::text::bigint"), "{get}");
        assert!(get.contains("NULL::int8"), "no updated_at column: {get}");
        let upsert = mapping.upsert_sql();
        assert!(upsert.contains("$3::text::integer"), "mcc is written as the column's type: {upsert}");
        assert!(upsert.contains("ON CONFLICT (\"mid\")"), "{upsert}");
        assert!(mapping.next_page_sql().contains("WHERE m.\"mid\" > $2::text::bigint ORDER BY m.\"mid\" LIMIT $1"));
    }
}
