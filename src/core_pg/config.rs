//! `merchant-edge core-pg`'s TOML config: where it listens, the database, the table and its column
//! names, the slot, and the limits. Every key is optional with a documented default
//! (`config/core-pg.example.toml`); unknown keys are rejected.
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, LogConfig};
use crate::merchant_id::IdRule;

/// Where `core-pg` listens for MerchantCore / CoreAdmin calls by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50053";
/// Where `core-pg` serves `/metrics`, `/readyz` and `/livez` by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9093";

/// The whole configuration of `merchant-edge core-pg`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorePgConfig {
    /// The gRPC listener (MerchantCore, CoreAdmin, health, reflection).
    pub server: ListenConfig,
    /// The operators' HTTP endpoint.
    pub admin: AdminListenConfig,
    /// The database, the table and the slot.
    pub postgres: PostgresConfig,
    /// The ID rule rows must meet (the edge's `[merchant_id]`): a row whose ID breaks it is skipped.
    pub merchant_id: IdRule,
    /// Logging.
    pub log: LogConfig,
}

/// The gRPC listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Where edges and relays connect.
    pub listen: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self { listen: DEFAULT_LISTEN.parse().expect("a valid address") }
    }
}

/// The operators' HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminListenConfig {
    /// Where Prometheus and probes connect.
    pub listen: SocketAddr,
}

impl Default for AdminListenConfig {
    fn default() -> Self {
        Self { listen: DEFAULT_ADMIN_LISTEN.parse().expect("a valid address") }
    }
}

/// The database side.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq-style URL or key=value string (`postgres://user@host:5432/db`). `--database-url` (or the
    /// `DATABASE_URL` environment variable) overrides it.
    pub url: String,
    /// A file holding the password, so it appears neither in the URL nor in the process list.
    pub password_file: Option<PathBuf>,
    /// The merchants table, optionally schema-qualified (`bank.merchant_master`).
    pub table: String,
    /// The table's column names.
    pub columns: ColumnsConfig,
    /// This process's logical replication slot. Two core-pg processes over one database need two slots.
    pub slot: String,
    /// The publication the slot streams with (deploy/postgres/schema.sql creates it with no tables:
    /// only the change messages are read).
    pub publication: String,
    /// Connections for reads and CoreAdmin writes (listings hold connections of their own).
    pub pool_size: NonZeroU32,
    /// Longest any statement of core-pg may run before PostgreSQL cancels it.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Longest a connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Changes kept in memory for WatchChanges resumption; the slot keeps their WAL, so they are
    /// replayed after a restart too. Older resume points get OUT_OF_RANGE (edges then resync).
    pub history: usize,
    /// Most WAL the slot may hold back for the history above; beyond it the slot is advanced to what
    /// was decoded (a restart then replays less history) so the database's disk does not fill.
    pub slot_max_retained_bytes: u64,
    /// How often the slot's retained WAL and lag are read for the metrics.
    #[serde(with = "humantime_serde")]
    pub slot_check_interval: Duration,
    /// A listing (ListMerchants at one snapshot) idle this long is closed; its next page is ABORTED.
    #[serde(with = "humantime_serde")]
    pub listing_idle_timeout: Duration,
    /// Listings open at once (each holds a connection and a snapshot); more are RESOURCE_EXHAUSTED.
    pub max_listings: NonZeroU32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            password_file: None,
            table: "merchants".into(),
            columns: ColumnsConfig::default(),
            slot: "merchant_edge".into(),
            publication: "merchant_edge".into(),
            pool_size: NonZeroU32::new(8).expect("non-zero"),
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            history: 100_000,
            slot_max_retained_bytes: 1 << 30,
            slot_check_interval: Duration::from_secs(10),
            listing_idle_timeout: Duration::from_secs(60),
            max_listings: NonZeroU32::new(16).expect("non-zero"),
        }
    }
}

/// The table's column names (`[postgres.columns]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColumnsConfig {
    /// The merchant ID: the primary key (or a unique, not-null column).
    pub merchant_id: String,
    /// The trading name.
    pub name: String,
    /// The merchant category code.
    pub mcc: String,
    /// The city.
    pub city: String,
    /// The status, as text: `ACTIVE`, `PENDING_REVIEW`, `SUSPENDED` or `CLOSED`.
    pub status: String,
    /// A bigint that merchant_edge.track's trigger stamps with every change.
    pub version: String,
    /// A timestamptz the trigger stamps with every change; empty when the table has none.
    pub updated_at: String,
}

impl Default for ColumnsConfig {
    fn default() -> Self {
        Self {
            merchant_id: "merchant_id".into(),
            name: "name".into(),
            mcc: "mcc".into(),
            city: "city".into(),
            status: "status".into(),
            version: "version".into(),
            updated_at: "updated_at".into(),
        }
    }
}

impl ColumnsConfig {
    /// Every mapped column with its config key, the optional `updated_at` only when set.
    pub fn named(&self) -> Vec<(&'static str, &str)> {
        let mut columns = vec![
            ("postgres.columns.merchant_id", self.merchant_id.as_str()),
            ("postgres.columns.name", self.name.as_str()),
            ("postgres.columns.mcc", self.mcc.as_str()),
            ("postgres.columns.city", self.city.as_str()),
            ("postgres.columns.status", self.status.as_str()),
            ("postgres.columns.version", self.version.as_str()),
        ];
        if !self.updated_at.is_empty() {
            columns.push(("postgres.columns.updated_at", self.updated_at.as_str()));
        }
        columns
    }
}

impl CorePgConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        crate::config::load_checked(path, Self::semantic_problems)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        crate::config::parse_checked(text, origin, Self::semantic_problems)
    }

    fn semantic_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let postgres = &self.postgres;
        if self.server.listen == self.admin.listen && self.server.listen.port() != 0 {
            problems.push(("admin.listen", format!("must differ from server.listen ({})", self.server.listen)));
        }
        if let Err(message) = self.merchant_id.validate() {
            problems.push(("merchant_id", message));
        }
        if postgres.table.trim().is_empty() {
            problems.push(("postgres.table", "must name the merchants table".to_owned()));
        }
        for (key, column) in postgres.columns.named() {
            if column.trim().is_empty() {
                problems.push((key, "must name a column of the table".to_owned()));
            }
        }
        if !is_slot_name(&postgres.slot) {
            problems.push((
                "postgres.slot",
                "must be 1 to 63 lowercase letters, digits and underscores (PostgreSQL's rule for slot names)".into(),
            ));
        }
        if postgres.publication.trim().is_empty() {
            problems.push(("postgres.publication", "must name a publication".to_owned()));
        }
        if postgres.history == 0 || postgres.history > 10_000_000 {
            problems.push(("postgres.history", "must be between 1 and 10,000,000 changes".to_owned()));
        }
        let bounded = [
            ("postgres.statement_timeout", postgres.statement_timeout),
            ("postgres.connect_timeout", postgres.connect_timeout),
            ("postgres.slot_check_interval", postgres.slot_check_interval),
            ("postgres.listing_idle_timeout", postgres.listing_idle_timeout),
        ];
        for (key, value) in bounded {
            if value < Duration::from_millis(10) || value > Duration::from_secs(24 * 3600) {
                problems.push((key, format!("must be between 10ms and 24h (got {value:?})")));
            }
        }
        problems
    }
}

fn is_slot_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_exactly_the_defaults() {
        let example = include_str!("../../config/core-pg.example.toml");
        assert_eq!(CorePgConfig::parse(example, "core-pg.example.toml").unwrap(), CorePgConfig::default());
    }

    #[test]
    fn the_defaults_are_valid_and_name_the_default_schema() {
        let config = CorePgConfig::parse("", "empty").expect("defaults are valid");
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.postgres.table, "merchants");
        assert_eq!(config.postgres.columns.named().len(), 7);
    }

    #[test]
    fn a_bank_table_is_mapped_column_by_column() {
        let text = "[postgres]\ntable = \"bank.merchant_master\"\nslot = \"edge_a\"\n\
                    [postgres.columns]\nmerchant_id = \"mid\"\nname = \"trading_name\"\nupdated_at = \"\"\n";
        let config = CorePgConfig::parse(text, "bank.toml").unwrap();
        let named = config.postgres.columns.named();
        assert!(named.contains(&("postgres.columns.merchant_id", "mid")));
        assert!(named.contains(&("postgres.columns.name", "trading_name")));
        assert!(!named.iter().any(|(key, _)| key.ends_with("updated_at")), "an empty updated_at maps no column");
    }

    #[test]
    fn problems_name_the_key_and_what_would_be_right() {
        let text = "[postgres]\nslot = \"Edge-A\"\nhistory = 0\n[postgres.columns]\nstatus = \"\"\n";
        let error = CorePgConfig::parse(text, "bad.toml").unwrap_err().to_string();
        for expected in
            ["postgres.slot", "lowercase letters", "postgres.history", "postgres.columns.status", "bad.toml"]
        {
            assert!(error.contains(expected), "{expected:?} missing from: {error}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = CorePgConfig::parse("[postgres]\ntabel = \"m\"\n", "typo.toml").unwrap_err().to_string();
        assert!(error.contains("tabel"), "{error}");
    }
}
