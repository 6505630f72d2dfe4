//! The SQL side of core-pg: a pool of connections for primary-key reads and CoreAdmin writes, the
//! database's identity (what the incarnation is tied to), and the watermarks the decoder syncs on.
use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::config::PostgresConfig;
use super::error::CorePgError;
use super::row::{status_text, Fields};
use super::schema::{Mapping, VerifyError};
use crate::pb::{Merchant, MerchantStatus};

/// The prefix of the watermark messages core-pg writes to find where its decoding stands.
pub const WATERMARK_PREFIX: &str = "merchant_edge.watermark";

/// The committed head: the last sequence a committed change took.
const HEAD_SQL: &str = "SELECT last_sequence FROM merchant_edge.head";

/// Which database history this is: a restored or failed-over database is another one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `pg-<system identifier>-<timeline>-<database OID>-<merchant_edge.head history>`.
    pub incarnation: String,
    /// The committed head when it was read.
    pub head: u64,
}

/// The connection settings of `config`: its URL, the password file, and the session settings every
/// core-pg connection runs with.
pub fn connect_config(config: &PostgresConfig, url: &str) -> Result<tokio_postgres::Config, String> {
    let mut connect =
        tokio_postgres::Config::from_str(url).map_err(|e| format!("invalid database URL ([postgres] url): {e}"))?;
    if let Some(path) = &config.password_file {
        let password = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read [postgres] password_file {}: {e}", path.display()))?;
        connect.password(password.trim_end_matches(['\r', '\n']));
    }
    if connect.get_user().is_none() {
        connect.user(std::env::var("USER").unwrap_or_else(|_| "postgres".into()));
    }
    let options = [
        connect.get_options().unwrap_or_default().to_owned(),
        format!("-c statement_timeout={}", config.statement_timeout.as_millis()),
    ]
    .join(" ");
    connect.options(options.trim()).application_name("merchant-edge core-pg").connect_timeout(config.connect_timeout);
    Ok(connect)
}

/// The pool and the statements run on it.
pub struct Database {
    pool: Pool,
    connect: tokio_postgres::Config,
    get: String,
    upsert: String,
    delete: String,
    count: String,
    /// The table's SQL, for listings.
    pub mapping: Mapping,
}

impl Database {
    /// Connects and checks the database against the config.
    pub async fn open(config: &PostgresConfig, connect: tokio_postgres::Config) -> Result<Self, CorePgError> {
        let manager =
            Manager::from_config(connect.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.get() as usize)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.statement_timeout))
            .create_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| CorePgError::Pool(e.to_string()))?;
        let client = pool.get().await?;
        let mapping = Mapping::verify(&client, config).await.map_err(|error| match error {
            VerifyError::Query(error) => CorePgError::from(error),
            problems => CorePgError::Schema(problems),
        })?;
        Ok(Self {
            get: mapping.get_sql(),
            upsert: mapping.upsert_sql(),
            delete: mapping.delete_sql(),
            count: mapping.count_sql(),
            mapping,
            pool,
            connect,
        })
    }

    /// Connections in the pool now, and how many of them are idle.
    pub fn pool_status(&self) -> (usize, usize) {
        let status = self.pool.status();
        (status.size, status.available)
    }

    /// A connection of its own (a listing holds one for its whole snapshot), outside the pool.
    pub async fn dedicated_connection(&self) -> Result<tokio_postgres::Client, CorePgError> {
        let (client, connection) = self.connect.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %super::error::describe(&error), "core-pg: a listing connection ended");
            }
        });
        Ok(client)
    }

    /// The database's identity and committed head, in one snapshot.
    pub async fn identity(&self) -> Result<Identity, CorePgError> {
        let client = self.pool.get().await?;
        let row = client.query_one(IDENTITY_SQL, &[]).await?;
        identity_of(&row)
    }

    /// The committed head.
    pub async fn head(&self) -> Result<u64, CorePgError> {
        let client = self.pool.get().await?;
        let row = client.query_one(HEAD_SQL, &[]).await?;
        Ok(sequence(row.get(0)))
    }

    /// Writes a watermark (its own transaction, after reading the committed head) and returns that head:
    /// once the decoder has seen the watermark, it has seen every change up to the head.
    pub async fn watermark(&self, nonce: &str) -> Result<u64, CorePgError> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let head = transaction.query_one(HEAD_SQL, &[]).await?;
        transaction.execute("SELECT pg_logical_emit_message(true, $1, $2)", &[&WATERMARK_PREFIX, &nonce]).await?;
        transaction.commit().await?;
        Ok(sequence(head.get(0)))
    }

    /// One merchant's row (`None` when there is none) and the sequence the read reflects.
    pub async fn get(&self, merchant_id: &str) -> Result<(Option<Fields>, u64), CorePgError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(&self.get).await?;
        let row = client.query_one(&statement, &[&merchant_id]).await?;
        Ok((Mapping::fields(&row, 1), sequence(row.get(0))))
    }

    /// How many merchants the table holds.
    pub async fn count(&self) -> Result<u64, CorePgError> {
        let client = self.pool.get().await?;
        let count: i64 = client.query_one(&self.count, &[]).await?.get(0);
        Ok(count.max(0) as u64)
    }

    /// Creates or changes a merchant; returns the sequence its change was numbered and the row as stored.
    pub async fn upsert(&self, merchant: &Merchant) -> Result<(u64, Fields), CorePgError> {
        let status = MerchantStatus::try_from(merchant.status).ok().and_then(status_text).ok_or_else(|| {
            CorePgError::InvalidArgument(format!("status {} is not a merchant status", merchant.status))
        })?;
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let statement = transaction.prepare_cached(&self.upsert).await?;
        let row = transaction
            .query_one(&statement, &[&merchant.merchant_id, &merchant.name, &merchant.mcc, &merchant.city, &status])
            .await?;
        let fields =
            Mapping::fields(&row, 0).ok_or_else(|| CorePgError::Database("the upsert returned no row".into()))?;
        let sequence = last_taken(&transaction).await?;
        transaction.commit().await?;
        Ok((sequence, fields))
    }

    /// Removes a merchant; returns the sequence its change was numbered.
    pub async fn delete(&self, merchant_id: &str) -> Result<u64, CorePgError> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let statement = transaction.prepare_cached(&self.delete).await?;
        if transaction.execute(&statement, &[&merchant_id]).await? == 0 {
            return Err(CorePgError::NotFound(merchant_id.to_owned()));
        }
        let sequence = last_taken(&transaction).await?;
        transaction.commit().await?;
        Ok(sequence)
    }

    /// Runs `sql` on a pooled connection (the slot's queries).
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, CorePgError> {
        let client = self.pool.get().await?;
        Ok(client.query(sql, params).await?)
    }
}

/// The identity and head, read in one statement. The timeline is the one WAL is written on now (the
/// first eight hex digits of the current WAL file's name), which changes at a promotion at once,
/// where the control file's checkpoint timeline lags until the next checkpoint.
pub const IDENTITY_SQL: &str = "SELECT s.system_identifier::text, pg_walfile_name(pg_current_wal_lsn()), \
     d.oid::int8, h.history::text, h.last_sequence \
     FROM pg_control_system() s, pg_database d, merchant_edge.head h WHERE d.datname = current_database()";

/// Reads a row of [`IDENTITY_SQL`].
pub fn identity_of(row: &tokio_postgres::Row) -> Result<Identity, CorePgError> {
    let system: String = row.get(0);
    let wal_file: String = row.get(1);
    let timeline = wal_file
        .get(..8)
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(|| CorePgError::Database(format!("unexpected WAL file name {wal_file:?}")))?;
    let database: i64 = row.get(2);
    let history: String = row.get(3);
    Ok(Identity { incarnation: format!("pg-{system}-{timeline}-{database}-{history}"), head: sequence(row.get(4)) })
}

/// A sequence as stored (the schema keeps it non-negative).
fn sequence(stored: i64) -> u64 {
    stored.max(0) as u64
}

/// The sequence the transaction's last change took (the trigger keeps it in a transaction-local
/// setting).
async fn last_taken(transaction: &deadpool_postgres::Transaction<'_>) -> Result<u64, CorePgError> {
    let taken: Option<i64> = transaction
        .query_one("SELECT nullif(current_setting('merchant_edge.taken', true), '')::int8", &[])
        .await?
        .get(0);
    taken.map(sequence).ok_or_else(|| {
        CorePgError::Database(
            "the change was not numbered: are the merchant_edge triggers installed and enabled?".into(),
        )
    })
}
