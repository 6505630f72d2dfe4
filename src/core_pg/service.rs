//! core-pg's gRPC services: MerchantCore over the table and the decoded history, and CoreAdmin's
//! writes as SQL (so the load generator's churn and the simulator's black-box tests run unchanged).
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::database::Database;
use super::error::CorePgError;
use super::history::{History, Read};
use super::listing::Listings;
use super::metrics::{CorePgMetrics, Method};
use super::row::{check_id, Fields, RowProblem};
use crate::merchant_id::IdRule;
use crate::pb::core_admin_server::CoreAdmin;
use crate::pb::merchant_core_server::MerchantCore;
use crate::pb::{
    ChangeNotice, ChangeResponse, DeleteMerchantRequest, GetMerchantRequest, GetMerchantResponse, GetStatsRequest,
    GetStatsResponse, ListMerchantsRequest, ListMerchantsResponse, Merchant, MerchantStatus, SetFaultsRequest,
    SetFaultsResponse, UpsertMerchantRequest, WatchChangesRequest,
};
use crate::upstream::INCARNATION_HEADER;

const DEFAULT_PAGE_SIZE: usize = 1_000;
const MAX_PAGE_SIZE: usize = 10_000;
/// Notices read from the history per wake-up of a stream.
const STREAM_BATCH: usize = 512;
/// How long a WatchChanges call waits for core-pg to learn where its history starts (after a start,
/// the replay of the slot's kept history) before answering UNAVAILABLE.
const SYNC_PATIENCE: Duration = Duration::from_secs(10);

/// What serving needs of the database, once it is reachable and checked.
pub struct Backend {
    /// The pool.
    pub database: Arc<Database>,
    /// Open listings.
    pub listings: Listings,
}

/// What both services share.
pub struct Shared {
    /// Set once the database is reachable and checked; until then calls are UNAVAILABLE.
    pub backend: OnceLock<Backend>,
    /// The decoded changes.
    pub history: Arc<History>,
    /// The metrics.
    pub metrics: Arc<CorePgMetrics>,
    /// The ID rule rows and requests must meet.
    pub rule: IdRule,
    /// Set when the server shuts down, so open change streams end instead of holding the drain.
    pub closing: watch::Sender<bool>,
}

impl Shared {
    fn backend(&self) -> Result<&Backend, CorePgError> {
        self.backend.get().ok_or_else(|| {
            CorePgError::NotReady(self.metrics.readiness().err().unwrap_or_else(|| "connecting to the database".into()))
        })
    }

    /// Counts the call and turns its error into the status the caller gets.
    fn answer<T>(&self, method: Method, result: Result<T, CorePgError>) -> Result<Response<T>, Status> {
        self.metrics.call(method, result.is_err());
        result.map(Response::new).map_err(Status::from)
    }

    fn skip(&self, problem: &RowProblem) {
        self.metrics.skipped(problem.reason());
        tracing::warn!(merchant_id = problem.merchant_id(), %problem, "core-pg: a row cannot be served; skipped");
    }

    /// The row as a merchant, or `None` (counted and logged) when it cannot be served.
    fn servable(&self, fields: Fields) -> Option<Merchant> {
        fields.into_merchant(&self.rule).inspect_err(|problem| self.skip(problem)).ok()
    }

    fn check_request_id(&self, merchant_id: &str) -> Result<(), CorePgError> {
        check_id(merchant_id, &self.rule)
            .map_err(|misfit| CorePgError::InvalidArgument(format!("merchant_id {merchant_id:?}: {misfit}")))
    }

    async fn get_merchant(&self, merchant_id: &str) -> Result<GetMerchantResponse, CorePgError> {
        self.check_request_id(merchant_id)?;
        let started = Instant::now();
        let (fields, as_of_sequence) = self.backend()?.database.get(merchant_id).await?;
        self.metrics.get_merchant_duration.observe(started.elapsed().as_secs_f64());
        let merchant = fields.and_then(|fields| self.servable(fields));
        Ok(GetMerchantResponse { found: merchant.is_some(), merchant, as_of_sequence })
    }

    async fn list_merchants(&self, request: ListMerchantsRequest) -> Result<ListMerchantsResponse, CorePgError> {
        let page_size = match request.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let (incarnation, _) = self.history.incarnation();
        if incarnation.is_empty() {
            return Err(CorePgError::NotReady("the database is not identified yet".into()));
        }
        let backend = self.backend()?;
        let page =
            backend.listings.page(&backend.database, &request.page_token, page_size, &incarnation, &self.rule).await;
        self.metrics.listings_open.set(backend.listings.open() as i64);
        let page = page?;
        for problem in &page.skipped {
            self.skip(problem);
        }
        Ok(ListMerchantsResponse {
            merchants: page.merchants,
            next_page_token: page.next_page_token,
            as_of_sequence: page.as_of_sequence,
            incarnation: page.incarnation,
        })
    }

    /// Checks where a stream after `after` would start, waiting while the history is not synced.
    async fn open_stream(&self, after: u64) -> Result<(String, u64), CorePgError> {
        let mut changed = self.history.subscribe();
        let deadline = Instant::now() + SYNC_PATIENCE;
        loop {
            let (incarnation, epoch) = self.history.incarnation();
            match self.history.read_after(after, 0, epoch) {
                Read::NotSynced | Read::Replaced => {}
                Read::TooOld { oldest_resumable, head } => {
                    return Err(CorePgError::OutOfRange(format!(
                        "after_sequence {after} is older than the kept history ({oldest_resumable}..={head}): \
                         resync from ListMerchants and resume from its as_of_sequence"
                    )));
                }
                Read::Notices(_) => {
                    let head = self.history.head().unwrap_or_default();
                    // Beyond what was decoded is fine while the database has it (the decoder is
                    // catching up); beyond the database's own head is another history.
                    if after > head {
                        let committed = self.backend()?.database.head().await?;
                        if after > committed {
                            return Err(CorePgError::OutOfRange(format!(
                                "after_sequence {after} is ahead of the database's head {committed}: \
                                 another history; resync from ListMerchants"
                            )));
                        }
                    }
                    return Ok((incarnation, epoch));
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                return Err(CorePgError::NotReady("catching up with the slot's kept history".into()));
            }
        }
    }
}

/// Sends every change after `after`, then live ones, until the subscriber leaves, the history is
/// replaced, or the server shuts down.
async fn stream_changes(
    shared: Arc<Shared>,
    mut after: u64,
    epoch: u64,
    tx: mpsc::Sender<Result<ChangeNotice, Status>>,
) {
    let mut changed = shared.history.subscribe();
    let mut closing = shared.closing.subscribe();
    loop {
        let notices = match shared.history.read_after(after, STREAM_BATCH, epoch) {
            Read::Notices(notices) => notices,
            Read::NotSynced => Vec::new(),
            Read::TooOld { oldest_resumable, head } => {
                let message = format!(
                    "the stream fell behind the kept history ({oldest_resumable}..={head}): resync from ListMerchants"
                );
                let _ = tx.send(Err(Status::out_of_range(message))).await;
                return;
            }
            Read::Replaced => {
                let message = "the database's identity changed (restored or failed over): resync from ListMerchants";
                let _ = tx.send(Err(Status::unavailable(message))).await;
                return;
            }
        };
        if notices.is_empty() {
            tokio::select! {
                changed = changed.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
                () = async { drop(closing.wait_for(|closing| *closing).await) } => {
                    let _ = tx.send(Err(Status::unavailable("core-pg: shutting down"))).await;
                    return;
                }
            }
            continue;
        }
        for notice in notices {
            after = notice.sequence;
            if tx.send(Ok(notice)).await.is_err() {
                return;
            }
        }
    }
}

/// MerchantCore.
#[derive(Clone)]
pub struct CoreService(pub Arc<Shared>);

#[tonic::async_trait]
impl MerchantCore for CoreService {
    async fn get_merchant(
        &self,
        request: Request<GetMerchantRequest>,
    ) -> Result<Response<GetMerchantResponse>, Status> {
        let result = self.0.get_merchant(&request.get_ref().merchant_id).await;
        self.0.answer(Method::GetMerchant, result)
    }

    async fn list_merchants(
        &self,
        request: Request<ListMerchantsRequest>,
    ) -> Result<Response<ListMerchantsResponse>, Status> {
        let result = self.0.list_merchants(request.into_inner()).await;
        self.0.answer(Method::ListMerchants, result)
    }

    type WatchChangesStream = ReceiverStream<Result<ChangeNotice, Status>>;

    async fn watch_changes(
        &self,
        request: Request<WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let shared = self.0.clone();
        let after = request.get_ref().after_sequence;
        let (incarnation, epoch) = match shared.open_stream(after).await {
            Ok(opened) => opened,
            Err(error) => return shared.answer(Method::WatchChanges, Err(error)),
        };
        let (tx, rx) = mpsc::channel(STREAM_BATCH);
        let metrics = shared.metrics.clone();
        metrics.watch_streams_opened.inc();
        metrics.watch_streams_open.inc();
        tokio::spawn(async move {
            stream_changes(shared, after, epoch, tx).await;
            metrics.watch_streams_open.dec();
        });
        let mut response = self.0.answer(Method::WatchChanges, Ok(ReceiverStream::new(rx)))?;
        if let Ok(incarnation) = incarnation.parse() {
            response.metadata_mut().insert(INCARNATION_HEADER, incarnation);
        }
        Ok(response)
    }
}

/// CoreAdmin: writes as SQL; the change's sequence is the one its notice carries.
#[derive(Clone)]
pub struct AdminService(pub Arc<Shared>);

impl AdminService {
    async fn upsert(&self, request: UpsertMerchantRequest) -> Result<ChangeResponse, CorePgError> {
        let mut merchant =
            request.merchant.ok_or_else(|| CorePgError::InvalidArgument("merchant is required".into()))?;
        self.0.check_request_id(&merchant.merchant_id)?;
        if merchant.status == MerchantStatus::Unspecified as i32 {
            merchant.status = MerchantStatus::Active as i32;
        }
        let (sequence, fields) = self.0.backend()?.database.upsert(&merchant).await?;
        let merchant =
            fields.into_merchant(&self.0.rule).map_err(|problem| CorePgError::Database(problem.to_string()))?;
        Ok(ChangeResponse { sequence, merchant: Some(merchant) })
    }

    async fn delete(&self, request: DeleteMerchantRequest) -> Result<ChangeResponse, CorePgError> {
        self.0.check_request_id(&request.merchant_id)?;
        let sequence = self.0.backend()?.database.delete(&request.merchant_id).await?;
        Ok(ChangeResponse { sequence, merchant: None })
    }

    async fn stats(&self) -> Result<GetStatsResponse, CorePgError> {
        let shared = &self.0;
        let (metrics, database) = (&shared.metrics, &shared.backend()?.database);
        Ok(GetStatsResponse {
            get_merchant_calls: metrics.calls_of(Method::GetMerchant),
            list_merchants_calls: metrics.calls_of(Method::ListMerchants),
            watch_streams_opened: metrics.watch_streams_opened.get(),
            watch_streams_open: metrics.watch_streams_open.get().max(0) as u64,
            head_sequence: database.head().await?,
            merchants: database.count().await?,
            incarnation: shared.history.incarnation().0,
            injected_errors: 0,
        })
    }
}

#[tonic::async_trait]
impl CoreAdmin for AdminService {
    async fn upsert_merchant(
        &self,
        request: Request<UpsertMerchantRequest>,
    ) -> Result<Response<ChangeResponse>, Status> {
        let result = self.upsert(request.into_inner()).await;
        self.0.answer(Method::UpsertMerchant, result)
    }

    async fn delete_merchant(
        &self,
        request: Request<DeleteMerchantRequest>,
    ) -> Result<Response<ChangeResponse>, Status> {
        let result = self.delete(request.into_inner()).await;
        self.0.answer(Method::DeleteMerchant, result)
    }

    async fn set_faults(&self, _request: Request<SetFaultsRequest>) -> Result<Response<SetFaultsResponse>, Status> {
        let unimplemented = CorePgError::Unimplemented(
            "SetFaults",
            "fault injection is the simulator's (merchant-edge core-sim); make PostgreSQL itself slow or unreachable instead",
        );
        Err(unimplemented.into())
    }

    async fn get_stats(&self, _request: Request<GetStatsRequest>) -> Result<Response<GetStatsResponse>, Status> {
        let result = self.stats().await;
        self.0.answer(Method::GetStats, result)
    }
}
