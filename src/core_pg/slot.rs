//! The replication slot: created when missing, recreated when its WAL was lost, and read for the
//! metrics (retained WAL and lag of every logical slot of the database, so a surviving core-pg shows
//! the slot of one that died growing). core-pg uses no temporary slot; its one permanent slot is named
//! in `[postgres] slot`.
use super::database::Database;
use super::error::CorePgError;
use super::metrics::SlotReading;

/// What [`ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The slot was there; decoding resumes from its confirmed position.
    Existing,
    /// The slot was missing and is created now: decoding starts at this moment.
    Created,
    /// Its WAL was gone (`max_slot_wal_keep_size`): dropped and created again.
    Recreated,
}

/// Makes sure `slot` exists as a pgoutput slot of this database that nobody else streams from.
pub async fn ensure(database: &Database, slot: &str) -> Result<Ensured, CorePgError> {
    let rows = database
        .query(
            "SELECT plugin::text, database::text = current_database(), active, active_pid, \
             coalesce(wal_status = 'lost', false) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(row) = rows.first() else {
        create(database, slot).await?;
        return Ok(Ensured::Created);
    };
    let (plugin, ours, active, pid, lost): (Option<String>, Option<bool>, bool, Option<i32>, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    if plugin.as_deref() != Some("pgoutput") || ours != Some(true) {
        return Err(CorePgError::NotReady(format!(
            "replication slot {slot:?} exists but is not a pgoutput slot of this database: give core-pg another \
             [postgres] slot, or drop that one"
        )));
    }
    if active {
        let pid = pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string());
        return Err(CorePgError::NotReady(format!(
            "replication slot {slot:?} is in use by backend {pid} (another core-pg with the same [postgres] slot? \
             each process needs its own)"
        )));
    }
    if lost {
        database.query("SELECT pg_drop_replication_slot($1)", &[&slot]).await?;
        create(database, slot).await?;
        return Ok(Ensured::Recreated);
    }
    Ok(Ensured::Existing)
}

async fn create(database: &Database, slot: &str) -> Result<(), CorePgError> {
    // Waits for transactions running now to end: the slot starts at a consistent point.
    database.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await?;
    Ok(())
}

/// Every logical slot of this database.
pub async fn readings(database: &Database) -> Result<Vec<SlotReading>, CorePgError> {
    let rows = database
        .query(
            "SELECT slot_name::text, active, \
             coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8, \
             coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8, \
             coalesce(wal_status = 'lost', false) \
             FROM pg_replication_slots WHERE slot_type = 'logical' AND database = current_database() \
             ORDER BY slot_name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| SlotReading {
            slot: row.get(0),
            active: row.get(1),
            retained_bytes: row.get(2),
            lag_bytes: row.get(3),
            lost: row.get(4),
        })
        .collect())
}
