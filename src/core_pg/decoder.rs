//! Follows the slot: a replication connection with pgoutput, the trigger's change messages decoded
//! into the [`History`] one committed transaction at a time, in commit order.
//!
//! Each connection first identifies the database (a new incarnation replaces the history), makes
//! sure the slot exists, streams from where the history ends, then writes a watermark: once the
//! watermark is decoded, every change committed before it has been too, and the history knows where
//! it starts. Lost connections are retried with backoff; what was decoded twice is dropped by sequence.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pgwire_replication::config::TlsConfig;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio_postgres::config::Host;

use super::change::{decode, ChangeContent, CHANGE_PREFIX};
use super::config::ColumnsConfig;
use super::database::{Database, Identity, WATERMARK_PREFIX};
use super::history::History;
use super::metrics::CorePgMetrics;
use super::row::{system_time_of_postgres_micros, timestamp_of_postgres_micros};
use super::slot::{self, Ensured};
use crate::backoff::Backoff;
use crate::merchant_id::IdRule;
use crate::pb::{ChangeKind, ChangeNotice};

/// Where and as whom the replication connection logs in.
#[derive(Clone)]
pub struct ReplicationTarget {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

impl ReplicationTarget {
    /// The replication side of the connection settings the pool uses.
    pub fn of(config: &tokio_postgres::Config) -> Result<Self, String> {
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let password = match config.get_password() {
            Some(bytes) => String::from_utf8(bytes.to_vec()).map_err(|_| "the database password is not UTF-8")?,
            None => String::new(),
        };
        Ok(Self {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            database: config.get_dbname().unwrap_or(&user).to_owned(),
            user,
            password,
        })
    }
}

/// What the decoder works with.
pub struct Decoder {
    /// The pool (identity, slot, watermarks).
    pub database: Arc<Database>,
    /// Where decoded changes go.
    pub history: Arc<History>,
    /// Where they are counted.
    pub metrics: Arc<CorePgMetrics>,
    /// The replication connection's target.
    pub target: ReplicationTarget,
    /// This process's slot.
    pub slot: String,
    /// The publication the slot streams with.
    pub publication: String,
    /// How rows are read.
    pub columns: ColumnsConfig,
    /// The ID rule rows must meet.
    pub rule: IdRule,
    /// Set when the slot holds more WAL than allowed: the next commit or keepalive releases it.
    pub release: Arc<AtomicBool>,
}

/// One transaction being decoded.
#[derive(Default)]
struct Transaction {
    commit_time_micros: i64,
    notices: Vec<ChangeNotice>,
    ours_watermark: bool,
}

impl Decoder {
    /// Follows the slot until the task is dropped.
    pub async fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let error = match self.follow().await {
                Ok(()) => "the replication stream ended".to_owned(),
                Err(error) => error,
            };
            // A connection that worked resets the backoff: the next failure is a new incident.
            if self.metrics.decoder_connected.get() == 1 {
                backoff.reset();
            }
            self.metrics.decoder_connected.set(0);
            self.metrics.set_readiness(Some(format!("not following the slot: {error}")));
            tracing::warn!(%error, slot = %self.slot, "core-pg: replication stopped; reconnecting");
            self.metrics.decoder_reconnects.inc();
            backoff.wait().await;
        }
    }

    /// One replication connection, from connecting until it fails.
    async fn follow(&self) -> Result<(), String> {
        let identity = self.database.identity().await.map_err(|e| e.to_string())?;
        if self.history.adopt(&identity.incarnation) {
            tracing::info!(incarnation = %identity.incarnation, head = identity.head, "core-pg: following this database history");
        }
        match slot::ensure(&self.database, &self.slot).await.map_err(|e| e.to_string())? {
            Ensured::Existing => {}
            Ensured::Created => tracing::info!(slot = %self.slot, "core-pg: created the replication slot"),
            Ensured::Recreated => {
                tracing::error!(slot = %self.slot, "core-pg: the slot's WAL was lost (max_slot_wal_keep_size?); recreated it, edges behind will resync");
                self.metrics.slot_recreated.inc();
                self.history.forget();
            }
        }
        let mut client = self.connect(&identity).await?;
        self.metrics.decoder_connected.set(1);
        let nonce = format!("{:016x}", fastrand::u64(..));
        let watermark_head = self.database.watermark(&nonce).await.map_err(|e| e.to_string())?;
        self.metrics.set_readiness(Some("catching up with the WAL".into()));
        let mut open: Option<Transaction> = None;
        loop {
            let event = client.recv().await.map_err(|e| e.to_string())?;
            let Some(event) = event else { return Ok(()) };
            match event {
                ReplicationEvent::Begin { commit_time_micros, .. } => {
                    open = Some(Transaction { commit_time_micros, ..Transaction::default() });
                }
                ReplicationEvent::Message { prefix, content, .. } => {
                    let Some(transaction) = open.as_mut() else { continue };
                    if prefix == CHANGE_PREFIX {
                        self.decode_into(transaction, &content, &identity.incarnation);
                    } else if prefix == WATERMARK_PREFIX && content.as_ref() == nonce.as_bytes() {
                        transaction.ours_watermark = true;
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let Some(transaction) = open.take() else { continue };
                    self.commit(transaction, end_lsn.0, watermark_head);
                    if self.release.swap(false, Ordering::Relaxed) {
                        self.release_slot(end_lsn.0);
                    }
                    client.update_applied_lsn(Lsn(self.history.confirmable()));
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    if open.is_none() && self.release.swap(false, Ordering::Relaxed) {
                        self.release_slot(wal_end.0.max(self.history.resume_lsn()));
                        client.update_applied_lsn(Lsn(self.history.confirmable()));
                    }
                }
                ReplicationEvent::XLogData { .. } | ReplicationEvent::StoppedAt { .. } => {}
            }
        }
    }

    /// Logs in for replication, checks it reached the database `identity` describes (a failover
    /// between the two reads would mix histories), and starts streaming where the history ends.
    async fn connect(&self, identity: &Identity) -> Result<ReplicationClient, String> {
        let target = &self.target;
        let config = ReplicationConfig::new(
            target.host.clone(),
            target.user.clone(),
            target.password.clone(),
            target.database.clone(),
            self.slot.clone(),
            self.publication.as_str(),
        )
        .with_port(target.port)
        .with_tls(TlsConfig::disabled())
        .with_start_lsn(Lsn(self.history.resume_lsn()))
        .with_ack_lsn(Lsn(self.history.confirmable()))
        .with_status_interval(Duration::from_secs(1))
        .with_application_name(format!("merchant-edge core-pg {}", self.slot));
        let mut client = ReplicationClient::connect_gated(config).await.map_err(|e| e.to_string())?;
        let system = client.identify_system().await.map_err(|e| e.to_string())?;
        let expected = format!("pg-{}-{}-", system.system_id, system.timeline);
        if !identity.incarnation.starts_with(&expected) {
            return Err(format!(
                "the replication connection reached system {} timeline {}, not {}: the database changed between reads",
                system.system_id, system.timeline, identity.incarnation
            ));
        }
        client.start().await.map_err(|e| e.to_string())?;
        client.wait_started().await.map_err(|e| e.to_string())?;
        Ok(client)
    }

    /// Decodes one change message into the open transaction; unservable rows become deletes (the
    /// sequence stays contiguous), messages that are not changes are counted and left out.
    fn decode_into(&self, transaction: &mut Transaction, content: &[u8], incarnation: &str) {
        let change = match decode(content, &self.columns, &self.rule) {
            Ok(change) => change,
            Err(malformed) => {
                tracing::error!(%malformed, "core-pg: skipped a change message");
                self.metrics.malformed_messages.inc();
                return;
            }
        };
        let (merchant_id, kind, merchant) = match change.content {
            ChangeContent::Upsert(merchant) => (merchant.merchant_id.clone(), ChangeKind::Upsert, Some(merchant)),
            ChangeContent::Delete { merchant_id } => (merchant_id, ChangeKind::Delete, None),
            ChangeContent::Unservable(problem) => {
                tracing::warn!(sequence = change.sequence, merchant_id = problem.merchant_id(), %problem,
                    "core-pg: a row cannot be served; edges are told to forget it");
                self.metrics.skipped(problem.reason());
                (problem.merchant_id().to_owned(), ChangeKind::Delete, None)
            }
        };
        transaction.notices.push(ChangeNotice {
            sequence: change.sequence,
            merchant_id,
            kind: kind as i32,
            merchant,
            committed_at: timestamp_of_postgres_micros(transaction.commit_time_micros),
            incarnation: incarnation.to_owned(),
        });
    }

    /// A transaction committed: its changes join the history together; our watermark syncs it.
    fn commit(&self, transaction: Transaction, end_lsn: u64, watermark_head: u64) {
        if !transaction.notices.is_empty() {
            let decoded = transaction.notices.len() as u64;
            if let Some(committed) = system_time_of_postgres_micros(transaction.commit_time_micros) {
                let delay = SystemTime::now().duration_since(committed).unwrap_or_default();
                self.metrics.decode_delay.observe(delay.as_secs_f64());
            }
            let appended = self.history.append(transaction.notices, end_lsn);
            self.metrics.changes_decoded.inc_by(decoded);
            self.metrics.transactions_decoded.inc();
            self.metrics.changes_duplicate.inc_by(appended.duplicates as u64);
            if let Some(after) = appended.gap_after {
                tracing::error!(after, "core-pg: changes are missing from the slot's stream (written with the triggers disabled?); the history restarts, edges behind resync");
                self.metrics.gaps.inc();
            }
        }
        if transaction.ours_watermark {
            if let Some(after) = self.history.sync(watermark_head) {
                tracing::error!(
                    after,
                    head = watermark_head,
                    "core-pg: changes up to the committed head never reached the slot; the history restarts there"
                );
                self.metrics.gaps.inc();
            }
            tracing::info!(bounds = ?self.history.bounds(), slot = %self.slot, "core-pg: following the slot");
            self.metrics.set_readiness(None);
        }
        let head = self.history.head().unwrap_or_default();
        self.metrics.head_sequence.set(i64::try_from(head).unwrap_or(i64::MAX));
        self.metrics.history_notices.set(self.history.kept() as i64);
    }

    fn release_slot(&self, lsn: u64) {
        self.history.release_up_to(lsn);
        self.metrics.slot_released.inc();
        tracing::warn!(slot = %self.slot, "core-pg: the slot held more WAL than [postgres] slot_max_retained_bytes; \
            advanced it past the kept history (a restart replays less, edges behind then resync)");
    }
}
