//! The simulator's gRPC services: MerchantCore over the ledger, with injectable faults, and CoreAdmin.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::ledger::{Ledger, LedgerError};
use crate::pb::core_admin_server::CoreAdmin;
use crate::pb::merchant_core_server::MerchantCore;
use crate::pb::{
    ChangeNotice, ChangeResponse, DeleteMerchantRequest, GetMerchantRequest, GetMerchantResponse, GetStatsRequest,
    GetStatsResponse, ListMerchantsRequest, ListMerchantsResponse, SetFaultsRequest, SetFaultsResponse,
    UpsertMerchantRequest, WatchChangesRequest,
};
use crate::upstream::INCARNATION_HEADER;

const DEFAULT_PAGE_SIZE: usize = 1_000;
const MAX_PAGE_SIZE: usize = 10_000;
/// Notices read from the history per wake-up of a stream.
const STREAM_BATCH: usize = 512;

/// The fault settings now in force, plus how many times a gap was asked for (so each stream open at
/// that moment produces exactly one gap).
#[derive(Debug, Clone, Default)]
struct Faults {
    settings: SetFaultsRequest,
    gap_requests: u64,
}

#[derive(Default)]
struct Counters {
    get_merchant_calls: AtomicU64,
    list_merchants_calls: AtomicU64,
    watch_streams_opened: AtomicU64,
    watch_streams_open: AtomicU64,
    injected_errors: AtomicU64,
    /// Deterministic error injection: a call fails each time the accumulated rate crosses a whole number.
    error_budget_millionths: AtomicU64,
}

/// Shared by both services of one simulator.
pub struct SimState {
    pub ledger: Ledger,
    faults: watch::Sender<Faults>,
    counters: Counters,
    /// Set when the server shuts down, so open change streams end instead of holding the drain.
    closing: watch::Sender<bool>,
}

impl SimState {
    pub fn new(ledger: Ledger) -> Arc<Self> {
        Arc::new(Self {
            ledger,
            faults: watch::Sender::new(Faults::default()),
            counters: Counters::default(),
            closing: watch::Sender::new(false),
        })
    }

    /// Lets change streams run (a simulator served again after a stop keeps its history, as a core
    /// process restarted on the same database would).
    pub fn open_streams(&self) {
        self.closing.send_replace(false);
    }

    /// Ends every open change stream (the server is shutting down).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    fn settings(&self) -> SetFaultsRequest {
        self.faults.borrow().settings
    }

    fn should_inject_error(&self, error_rate: f64) -> bool {
        if error_rate <= 0.0 {
            return false;
        }
        let step = (error_rate.min(1.0) * 1e6) as u64;
        let before = self.counters.error_budget_millionths.fetch_add(step, Ordering::Relaxed);
        (before + step) / 1_000_000 > before / 1_000_000
    }

    /// What a slow network (or a hung core) adds after the core has read its answer.
    async fn deliver_late(&self, settings: &SetFaultsRequest) {
        if settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(settings.latency_ms.into())).await;
        }
        if settings.hang {
            let mut faults = self.faults.subscribe();
            let _ = faults.wait_for(|f| !f.settings.hang).await;
        }
    }
}

#[derive(Clone)]
pub struct CoreService(pub Arc<SimState>);

fn ledger_status(error: LedgerError) -> Status {
    match error {
        LedgerError::BadId => Status::invalid_argument(error.to_string()),
        LedgerError::UnknownMerchant(_) => Status::not_found(error.to_string()),
        LedgerError::OutOfHistory { .. } => Status::out_of_range(error.to_string()),
    }
}

#[tonic::async_trait]
impl MerchantCore for CoreService {
    async fn get_merchant(
        &self,
        request: Request<GetMerchantRequest>,
    ) -> Result<Response<GetMerchantResponse>, Status> {
        let sim = &self.0;
        sim.counters.get_merchant_calls.fetch_add(1, Ordering::Relaxed);
        let settings = sim.settings();
        let (merchant, as_of_sequence) = sim.ledger.get(&request.get_ref().merchant_id);
        sim.deliver_late(&settings).await;
        if sim.should_inject_error(settings.error_rate) {
            sim.counters.injected_errors.fetch_add(1, Ordering::Relaxed);
            return Err(Status::unavailable("core-sim: injected error (SetFaults.error_rate)"));
        }
        Ok(Response::new(GetMerchantResponse { found: merchant.is_some(), merchant, as_of_sequence }))
    }

    async fn list_merchants(
        &self,
        request: Request<ListMerchantsRequest>,
    ) -> Result<Response<ListMerchantsResponse>, Status> {
        let sim = &self.0;
        sim.counters.list_merchants_calls.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        let page_size = match request.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let settings = sim.settings();
        let page = sim.ledger.page(&request.page_token, page_size);
        sim.deliver_late(&settings).await;
        Ok(Response::new(ListMerchantsResponse {
            merchants: page.merchants,
            next_page_token: page.next_after.unwrap_or_default(),
            as_of_sequence: page.as_of_sequence,
            incarnation: sim.ledger.incarnation().to_owned(),
        }))
    }

    type WatchChangesStream = ReceiverStream<Result<ChangeNotice, Status>>;

    async fn watch_changes(
        &self,
        request: Request<WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let sim = self.0.clone();
        let after = request.get_ref().after_sequence;
        sim.ledger.changes_after(after, 0).map_err(ledger_status)?;
        if sim.settings().drop_streams {
            return Err(Status::unavailable("core-sim: streams are being dropped (SetFaults.drop_streams)"));
        }
        sim.counters.watch_streams_opened.fetch_add(1, Ordering::Relaxed);
        // Decided when the stream opens, so a test can stall one subscriber and not the others.
        let stalled = sim.settings().stall_new_streams;
        let (tx, rx) = mpsc::channel(STREAM_BATCH);
        tokio::spawn(async move {
            sim.counters.watch_streams_open.fetch_add(1, Ordering::Relaxed);
            if stalled {
                hold_silent(&sim, &tx).await;
            } else {
                stream_changes(&sim, after, &tx).await;
            }
            sim.counters.watch_streams_open.fetch_sub(1, Ordering::Relaxed);
        });
        let mut response = Response::new(ReceiverStream::new(rx));
        if let Ok(incarnation) = self.0.ledger.incarnation().parse() {
            response.metadata_mut().insert(INCARNATION_HEADER, incarnation);
        }
        Ok(response)
    }
}

/// Keeps a stream open without sending anything (SetFaults.stall_new_streams) until the subscriber
/// leaves or the server shuts down.
async fn hold_silent(sim: &SimState, tx: &mpsc::Sender<Result<ChangeNotice, Status>>) {
    let mut closing = sim.closing.subscribe();
    tokio::select! {
        () = tx.closed() => {}
        () = async { drop(closing.wait_for(|closing| *closing).await) } => {
            let _ = tx.send(Err(Status::unavailable("core-sim: shutting down"))).await;
        }
    }
}

/// Sends every change after `after`, then live ones, until the subscriber leaves or a fault ends it.
async fn stream_changes(sim: &SimState, mut after: u64, tx: &mpsc::Sender<Result<ChangeNotice, Status>>) {
    let mut head = sim.ledger.subscribe_head();
    let mut faults = sim.faults.subscribe();
    let mut closing = sim.closing.subscribe();
    let mut gaps_seen = faults.borrow_and_update().gap_requests;
    let mut skip_left = 0u32;
    loop {
        let batch = match sim.ledger.changes_after(after, STREAM_BATCH) {
            Ok(batch) => batch,
            Err(error) => {
                let _ = tx.send(Err(ledger_status(error))).await;
                return;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                changed = faults.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
                () = async { drop(closing.wait_for(|closing| *closing).await) } => {
                    let _ = tx.send(Err(Status::unavailable("core-sim: shutting down"))).await;
                    return;
                }
            }
        }
        for notice in batch {
            let current = faults.borrow_and_update().clone();
            if *closing.borrow() {
                let _ = tx.send(Err(Status::unavailable("core-sim: shutting down"))).await;
                return;
            }
            if current.settings.drop_streams {
                let _ = tx.send(Err(Status::unavailable("core-sim: stream dropped (SetFaults.drop_streams)"))).await;
                return;
            }
            if current.gap_requests > gaps_seen {
                gaps_seen = current.gap_requests;
                skip_left = current.settings.skip_notices;
            }
            after = notice.sequence;
            if skip_left > 0 {
                skip_left -= 1;
                continue;
            }
            if current.settings.notice_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(current.settings.notice_delay_ms.into())).await;
            }
            let copies = if current.settings.duplicate_notices { 2 } else { 1 };
            for _ in 0..copies {
                if tx.send(Ok(notice.clone())).await.is_err() {
                    return;
                }
            }
        }
        if faults.borrow().settings.drop_streams {
            let _ = tx.send(Err(Status::unavailable("core-sim: stream dropped (SetFaults.drop_streams)"))).await;
            return;
        }
    }
}

#[derive(Clone)]
pub struct AdminService(pub Arc<SimState>);

#[tonic::async_trait]
impl CoreAdmin for AdminService {
    async fn upsert_merchant(
        &self,
        request: Request<UpsertMerchantRequest>,
    ) -> Result<Response<ChangeResponse>, Status> {
        let merchant = request.into_inner().merchant.ok_or_else(|| Status::invalid_argument("merchant is required"))?;
        let notice = self.0.ledger.upsert(merchant).map_err(ledger_status)?;
        Ok(Response::new(ChangeResponse { sequence: notice.sequence, merchant: notice.merchant }))
    }

    async fn delete_merchant(
        &self,
        request: Request<DeleteMerchantRequest>,
    ) -> Result<Response<ChangeResponse>, Status> {
        let notice = self.0.ledger.delete(&request.get_ref().merchant_id).map_err(ledger_status)?;
        Ok(Response::new(ChangeResponse { sequence: notice.sequence, merchant: None }))
    }

    async fn set_faults(&self, request: Request<SetFaultsRequest>) -> Result<Response<SetFaultsResponse>, Status> {
        let settings = request.into_inner();
        if !(0.0..=1.0).contains(&settings.error_rate) {
            return Err(Status::invalid_argument("error_rate must be between 0.0 and 1.0"));
        }
        self.0.faults.send_modify(|faults| {
            if settings.skip_notices > 0 {
                faults.gap_requests += 1;
            }
            faults.settings = settings;
        });
        Ok(Response::new(SetFaultsResponse { active: Some(settings) }))
    }

    async fn get_stats(&self, _request: Request<GetStatsRequest>) -> Result<Response<GetStatsResponse>, Status> {
        let sim = &self.0;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Ok(Response::new(GetStatsResponse {
            get_merchant_calls: read(&sim.counters.get_merchant_calls),
            list_merchants_calls: read(&sim.counters.list_merchants_calls),
            watch_streams_opened: read(&sim.counters.watch_streams_opened),
            watch_streams_open: read(&sim.counters.watch_streams_open),
            injected_errors: read(&sim.counters.injected_errors),
            head_sequence: sim.ledger.head(),
            merchants: sim.ledger.merchants(),
            incarnation: sim.ledger.incarnation().to_owned(),
        }))
    }
}
