//! `ListMerchants` at one consistent point. The first page opens a REPEATABLE READ, READ ONLY
//! transaction on a connection of its own and exports its snapshot; every page of the listing is read
//! in that snapshot, so all pages reflect the same sequence S (the head the snapshot sees) and
//! `WatchChanges` after S continues exactly where the listing ends. The page token names the snapshot,
//! so another core-pg process over the same database serves the next page by importing it
//! (`SET TRANSACTION SNAPSHOT`) while the first process still holds it open.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::database::{identity_of, Database, IDENTITY_SQL};
use super::error::CorePgError;
use super::row::{Fields, RowProblem};
use super::schema::Mapping;
use crate::merchant_id::IdRule;
use crate::pb::Merchant;

/// One page, read.
pub struct Page {
    /// The page's servable merchants, in ID order.
    pub merchants: Vec<Merchant>,
    /// The page's rows that cannot be served (left out).
    pub skipped: Vec<RowProblem>,
    /// Empty on the last page.
    pub next_page_token: String,
    /// The sequence every page of the listing reflects.
    pub as_of_sequence: u64,
    /// The database history the snapshot belongs to.
    pub incarnation: String,
}

/// Where a listing is: its snapshot, its sequence, and the last ID listed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    snapshot: String,
    sequence: u64,
    after: String,
}

impl Token {
    fn encode(&self) -> String {
        let after: String = self.after.bytes().map(|b| format!("{b:02x}")).collect();
        format!("v1.{}.{}.{after}", self.snapshot, self.sequence)
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let (version, snapshot, sequence, after) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Snapshot names are hex digits and dashes; anything else never reaches SQL.
        let plausible = !snapshot.is_empty() && snapshot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if version != "v1" || !plausible || parts.next().is_some() || after.len() % 2 != 0 {
            return None;
        }
        let after = (0..after.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(after.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Self {
            snapshot: snapshot.to_owned(),
            sequence: sequence.parse().ok()?,
            after: String::from_utf8(after).ok()?,
        })
    }
}

/// A listing's transaction, held between pages.
struct Session {
    client: tokio::sync::Mutex<tokio_postgres::Client>,
    sequence: u64,
    incarnation: String,
    last_used: Mutex<Instant>,
    _permit: OwnedSemaphorePermit,
}

/// The listings open in this process.
pub struct Listings {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    permits: Arc<Semaphore>,
    max: u32,
    idle_timeout: Duration,
    first_page: String,
    next_page: String,
}

impl Listings {
    /// Room for `max` listings at once, each closed after `idle_timeout` without a page.
    pub fn new(mapping: &Mapping, max: u32, idle_timeout: Duration) -> Self {
        Self {
            sessions: Mutex::default(),
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            idle_timeout,
            first_page: mapping.first_page_sql(),
            next_page: mapping.next_page_sql(),
        }
    }

    /// Listings open now.
    pub fn open(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Reads the page `token` names (the first page for an empty token) of up to `size` merchants,
    /// for a process following `incarnation`.
    pub async fn page(
        &self,
        database: &Database,
        token: &str,
        size: usize,
        incarnation: &str,
        rule: &IdRule,
    ) -> Result<Page, CorePgError> {
        let (snapshot, session, after) = if token.is_empty() {
            let (snapshot, session) = self.begin(database, incarnation).await?;
            (snapshot, session, None)
        } else {
            let token = Token::decode(token).ok_or_else(|| {
                CorePgError::InvalidArgument(
                    "page_token is not one core-pg issued; pass next_page_token as given".into(),
                )
            })?;
            let session = match self.find(&token.snapshot) {
                Some(session) => session,
                None => self.import(database, &token, incarnation).await?,
            };
            (token.snapshot, session, Some(token.after))
        };
        *session.last_used.lock() = Instant::now();
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let rows = {
            let client = session.client.lock().await;
            let read = match &after {
                None => client.query(&self.first_page, &[&limit]).await,
                Some(after) => client.query(&self.next_page, &[&limit, after]).await,
            };
            read.inspect_err(|_| self.close(&snapshot))?
        };
        let more = rows.len() > size;
        let fields: Vec<Fields> = rows.iter().take(size).filter_map(|row| Mapping::fields(row, 0)).collect();
        let next_page_token = if more {
            let after = fields.last().map(|last| last.merchant_id.clone()).unwrap_or_default();
            Token { snapshot: snapshot.clone(), sequence: session.sequence, after }.encode()
        } else {
            self.close(&snapshot);
            String::new()
        };
        let (mut merchants, mut skipped) = (Vec::with_capacity(fields.len()), Vec::new());
        for row in fields {
            match row.into_merchant(rule) {
                Ok(merchant) => merchants.push(merchant),
                Err(problem) => skipped.push(problem),
            }
        }
        Ok(Page {
            merchants,
            skipped,
            next_page_token,
            as_of_sequence: session.sequence,
            incarnation: session.incarnation.clone(),
        })
    }

    /// Closes listings idle for longer than the timeout; returns how many.
    pub fn close_idle(&self) -> usize {
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        let before = sessions.len();
        sessions.retain(|_, session| now.duration_since(*session.last_used.lock()) < self.idle_timeout);
        before - sessions.len()
    }

    fn find(&self, snapshot: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(snapshot).cloned()
    }

    fn close(&self, snapshot: &str) {
        self.sessions.lock().remove(snapshot);
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, CorePgError> {
        self.permits.clone().try_acquire_owned().map_err(|_| CorePgError::TooManyListings(self.max))
    }

    /// Opens a listing: its snapshot, and the head and identity that snapshot sees.
    async fn begin(&self, database: &Database, incarnation: &str) -> Result<(String, Arc<Session>), CorePgError> {
        let permit = self.permit()?;
        let client = database.dedicated_connection().await?;
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let snapshot: String = client.query_one("SELECT pg_export_snapshot()", &[]).await?.get(0);
        let identity = identity_of(&client.query_one(IDENTITY_SQL, &[]).await?)?;
        if identity.incarnation != incarnation {
            return Err(CorePgError::NotReady(format!(
                "the database is {} but the change stream follows {incarnation:?}",
                identity.incarnation
            )));
        }
        let session = self.register(&snapshot, client, identity.head, identity.incarnation, permit);
        Ok((snapshot, session))
    }

    /// Joins a listing another core-pg process (or this one, before a restart) began.
    async fn import(&self, database: &Database, token: &Token, incarnation: &str) -> Result<Arc<Session>, CorePgError> {
        let permit = self.permit()?;
        let client = database.dedicated_connection().await?;
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        // Checked by Token::decode to be hex digits and dashes only.
        if client.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{}'", token.snapshot)).await.is_err() {
            return Err(CorePgError::ListingExpired);
        }
        let identity = identity_of(&client.query_one(IDENTITY_SQL, &[]).await?)?;
        if identity.incarnation != incarnation || identity.head != token.sequence {
            return Err(CorePgError::ListingExpired);
        }
        Ok(self.register(&token.snapshot, client, identity.head, identity.incarnation, permit))
    }

    fn register(
        &self,
        snapshot: &str,
        client: tokio_postgres::Client,
        sequence: u64,
        incarnation: String,
        permit: OwnedSemaphorePermit,
    ) -> Arc<Session> {
        let session = Arc::new(Session {
            client: tokio::sync::Mutex::new(client),
            sequence,
            incarnation,
            last_used: Mutex::new(Instant::now()),
            _permit: permit,
        });
        self.sessions.lock().insert(snapshot.to_owned(), session.clone());
        session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_any_id() {
        for after in ["898000000000042", "", "a.b\u{00e9}\"'"] {
            let token = Token { snapshot: "00000003-0000001B-1".into(), sequence: 42, after: after.into() };
            assert_eq!(Token::decode(&token.encode()), Some(token));
        }
    }

    #[test]
    fn tokens_that_could_reach_sql_are_refused() {
        for text in
            ["", "v1", "v2.00000003-1.4.", "v1.0000'; DROP TABLE m; --.4.", "v1.00000003-1.x.", "v1.00000003-1.4.4"]
        {
            assert_eq!(Token::decode(text), None, "{text:?} accepted");
        }
    }
}
