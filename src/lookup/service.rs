//! The terminal-facing `merchant.v1.MerchantLookup` gRPC service, answering in the server's encoding
//! of the contract ([`crate::wire`]): cached merchants go out as the bytes encoded when they were learned.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::outcome::{answer_reason, classify, CallError};
use super::resolver::{Answer, InMemory, LookupError, Resolver};
use crate::config::LiveConfig;
use crate::guard::Caller;
use crate::readiness::Readiness;
use crate::wire::merchant_lookup_server::MerchantLookup;
use crate::wire::EncodedMerchant;
use crate::wire::{
    BatchLookupRequest, BatchLookupResponse, BatchLookupResult, LookupError as ResultError, LookupRequest,
    LookupResponse, Provenance,
};

/// The `MerchantLookup` service.
pub struct LookupService {
    resolver: Arc<Resolver>,
    config: LiveConfig,
    readiness: Readiness,
}

impl LookupService {
    /// Serves lookups through `resolver`.
    pub fn new(resolver: Arc<Resolver>, config: LiveConfig, readiness: Readiness) -> Self {
        Self { resolver, config, readiness }
    }
}

/// The caller as core protection sees it: its client (the configured metadata key's value, else the
/// peer's IP address) and its deadline (the `grpc-timeout` it sent). Built only for lookups that need
/// the core, so hits pay nothing for it.
fn caller<T>(request: &Request<T>, config: &LiveConfig) -> Caller {
    let client_key = config.load().protect.client_key.clone();
    let from_metadata = client_key
        .and_then(|key| request.metadata().get(key.as_str()).and_then(|value| value.to_str().ok()).map(str::to_owned));
    Caller {
        client: from_metadata.or_else(|| request.remote_addr().map(|peer| peer.ip().to_string())),
        deadline: request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(grpc_timeout)
            // Our own deadline comes a little earlier, leaving time to send an answer (a stale merchant
            // or a clear DEADLINE_EXCEEDED) before tonic cuts the call off at the caller's deadline.
            .map(|timeout| Instant::now() + timeout - (timeout / 10).min(Duration::from_millis(50))),
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H M S m u n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Results a stream may have ready but not yet taken by the client; beyond this the edge stops
/// reading its requests (HTTP/2 flow control then pushes back on the client).
const STREAM_RESULTS_BUFFERED: usize = 256;

fn provenance(answer: &Answer) -> Provenance {
    Provenance {
        source: answer.source as i32,
        age_ms: answer.age.as_millis().try_into().unwrap_or(u64::MAX),
        as_of_sequence: answer.as_of_sequence,
    }
}

/// The answer's merchant, moved out: a hit's bytes were copied out of the store for this answer alone,
/// and a clone would first promote them to a shared, separately allocated buffer.
fn merchant_bytes(merchant: Option<EncodedMerchant>) -> Bytes {
    merchant.map(EncodedMerchant::into_bytes).unwrap_or_default()
}

impl From<Answer> for LookupResponse {
    fn from(answer: Answer) -> Self {
        let (provenance, reason) = (Some(provenance(&answer)), answer_reason(&answer) as i32);
        Self { found: answer.merchant.is_some(), merchant: merchant_bytes(answer.merchant), provenance, reason }
    }
}

fn batch_result(requested_merchant_id: String, answer: Result<Answer, LookupError>) -> BatchLookupResult {
    match answer {
        Ok(answer) => {
            let (provenance, reason) = (Some(provenance(&answer)), answer_reason(&answer) as i32);
            let found = answer.merchant.is_some();
            let merchant = merchant_bytes(answer.merchant);
            BatchLookupResult { found, merchant, provenance, requested_merchant_id, error: None, reason }
        }
        Err(error) => {
            let (code, reason) = classify(&error);
            let reason = reason as i32;
            BatchLookupResult {
                requested_merchant_id,
                error: Some(ResultError { code: code as i32, message: error.to_string(), reason }),
                reason,
                ..Default::default()
            }
        }
    }
}

/// Answers one `StreamLookup` call until the client half-closes, the client goes away (then its lookups
/// waiting for the core are dropped with it), or a drain starts.
async fn serve_stream(
    resolver: Arc<Resolver>,
    config: LiveConfig,
    caller: Caller,
    mut requests: Streaming<LookupRequest>,
    results: mpsc::Sender<Result<BatchLookupResult, Status>>,
    drain_started: impl std::future::Future<Output = ()>,
) {
    let mut from_core = FuturesUnordered::new();
    tokio::pin!(drain_started);
    let mut reading = true;
    while reading || !from_core.is_empty() {
        // Lookups waiting for the core are bounded like a batch, so one stream cannot queue unboundedly.
        let may_read = reading && from_core.len() < config.load().server.max_batch_size.get() as usize;
        let result = tokio::select! {
            biased;
            () = results.closed() => return,
            () = &mut drain_started, if reading => {
                reading = false;
                continue;
            }
            Some((id, answer)) = from_core.next(), if !from_core.is_empty() => batch_result(id, answer),
            request = requests.message(), if may_read => match request {
                Ok(Some(LookupRequest { merchant_id, min_sequence })) => match resolver.memory().answer_at_least(&merchant_id, min_sequence) {
                    Ok(InMemory::Answered(answer)) => batch_result(merchant_id, Ok(answer)),
                    // A lookup behind its token waits (for the feed, then the core) beside the others.
                    Ok(InMemory::Missed(normalised) | InMemory::Behind(normalised)) => {
                        let (resolver, normalised, caller) = (resolver.clone(), normalised.into_owned(), &caller);
                        from_core.push(async move {
                            (merchant_id, resolver.answer_beyond_memory(&normalised, min_sequence, caller).await)
                        });
                        continue;
                    }
                    Err(error) => batch_result(merchant_id, Err(error)),
                },
                Ok(None) => {
                    reading = false;
                    continue;
                }
                Err(status) => {
                    // The request stream broke (reset, bad frame): the call is over for the client too.
                    let _ = results.send(Err(status)).await;
                    return;
                }
            },
        };
        if results.send(Ok(result)).await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl MerchantLookup for LookupService {
    type StreamLookupStream = ReceiverStream<Result<BatchLookupResult, Status>>;

    async fn stream_lookup(
        &self,
        request: Request<Streaming<LookupRequest>>,
    ) -> Result<Response<Self::StreamLookupStream>, Status> {
        let (results, receiver) = mpsc::channel(STREAM_RESULTS_BUFFERED);
        // A stream's deadline bounds the whole stream, so each lookup gets only the per-call bounds.
        let caller = Caller { deadline: None, ..caller(&request, &self.config) };
        tokio::spawn(serve_stream(
            self.resolver.clone(),
            self.config.clone(),
            caller,
            request.into_inner(),
            results,
            self.readiness.drain_started(),
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn lookup(&self, request: Request<LookupRequest>) -> Result<Response<LookupResponse>, Status> {
        let LookupRequest { merchant_id, min_sequence } = request.get_ref();
        let answer = match self.resolver.memory().answer_at_least(merchant_id, *min_sequence)? {
            InMemory::Answered(answer) => answer,
            InMemory::Missed(id) | InMemory::Behind(id) => {
                let caller = caller(&request, &self.config);
                // Boxed apart: tonic boxes this whole future for every call, hits included, and the
                // core's path would otherwise size it (and the copy into that box) for all of them.
                Box::pin(self.resolver.answer_beyond_memory(&id, *min_sequence, &caller)).await?
            }
        };
        Ok(Response::new(answer.into()))
    }

    /// Answers every ID memory can answer at once, then asks the core for the rest concurrently
    /// (coalesced with any other lookup of the same IDs), and returns the results in request order.
    async fn batch_lookup(
        &self,
        request: Request<BatchLookupRequest>,
    ) -> Result<Response<BatchLookupResponse>, Status> {
        let caller = caller(&request, &self.config);
        let BatchLookupRequest { merchant_ids: ids, min_sequence } = request.into_inner();
        let max = self.config.load().server.max_batch_size.get() as usize;
        if ids.len() > max {
            return Err(CallError::BatchTooLarge { got: ids.len(), max }.into());
        }
        let mut answers = Vec::with_capacity(ids.len());
        let mut misses = Vec::new();
        let memory = self.resolver.memory();
        for (position, id) in ids.iter().enumerate() {
            match memory.answer_at_least(id, min_sequence) {
                Ok(InMemory::Answered(answer)) => answers.push(Some(Ok(answer))),
                Ok(InMemory::Missed(normalised) | InMemory::Behind(normalised)) => {
                    misses.push((position, normalised.into_owned()));
                    answers.push(None);
                }
                Err(error) => answers.push(Some(Err(error))),
            }
        }
        drop(memory);
        let fetched = futures::future::join_all(
            misses.iter().map(|(_, id)| self.resolver.answer_beyond_memory(id, min_sequence, &caller)),
        )
        .await;
        for ((position, _), answer) in misses.into_iter().zip(fetched) {
            answers[position] = Some(answer);
        }
        let results = ids
            .into_iter()
            .zip(answers)
            .map(|(id, answer)| batch_result(id, answer.expect("every position was answered")))
            .collect();
        Ok(Response::new(BatchLookupResponse { results }))
    }
}
