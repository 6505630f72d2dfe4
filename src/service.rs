//! The terminal-facing `merchant.v1.MerchantLookup` gRPC service, answering in the server's encoding
//! of the contract ([`crate::wire`]): cached merchants go out as the bytes encoded when they were learned.
use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::config::LiveConfig;
use crate::resolver::{Answer, InMemory, LookupError, Resolver};
use crate::status::{lookup_code, CallError};
use crate::wire::merchant_lookup_server::MerchantLookup;
use crate::wire::{
    BatchLookupRequest, BatchLookupResponse, BatchLookupResult, LookupError as ResultError, LookupRequest,
    LookupResponse, Provenance,
};

pub struct LookupService {
    resolver: Arc<Resolver>,
    config: LiveConfig,
}

impl LookupService {
    pub fn new(resolver: Arc<Resolver>, config: LiveConfig) -> Self {
        Self { resolver, config }
    }
}

fn provenance(answer: &Answer) -> Provenance {
    Provenance {
        source: answer.source as i32,
        age_ms: answer.age.as_millis().try_into().unwrap_or(u64::MAX),
        as_of_sequence: answer.as_of_sequence,
    }
}

fn merchant_bytes(answer: &Answer) -> Bytes {
    answer.merchant.as_ref().map(|merchant| merchant.bytes()).unwrap_or_default()
}

impl From<Answer> for LookupResponse {
    fn from(answer: Answer) -> Self {
        Self {
            found: answer.merchant.is_some(),
            merchant: merchant_bytes(&answer),
            provenance: Some(provenance(&answer)),
        }
    }
}

fn batch_result(requested_merchant_id: String, answer: Result<Answer, LookupError>) -> BatchLookupResult {
    match answer {
        Ok(answer) => BatchLookupResult {
            found: answer.merchant.is_some(),
            merchant: merchant_bytes(&answer),
            provenance: Some(provenance(&answer)),
            requested_merchant_id,
            error: None,
        },
        Err(error) => BatchLookupResult {
            requested_merchant_id,
            error: Some(ResultError { code: lookup_code(&error) as i32, message: error.to_string() }),
            ..Default::default()
        },
    }
}

#[tonic::async_trait]
impl MerchantLookup for LookupService {
    async fn lookup(&self, request: Request<LookupRequest>) -> Result<Response<LookupResponse>, Status> {
        let answer = self.resolver.lookup(&request.get_ref().merchant_id).await?;
        Ok(Response::new(answer.into()))
    }

    /// Answers every ID memory can answer at once, then asks the core for the rest concurrently
    /// (coalesced with any other lookup of the same IDs), and returns the results in request order.
    async fn batch_lookup(
        &self,
        request: Request<BatchLookupRequest>,
    ) -> Result<Response<BatchLookupResponse>, Status> {
        let ids = request.into_inner().merchant_ids;
        let max = self.config.load().server.max_batch_size.get() as usize;
        if ids.len() > max {
            return Err(CallError::BatchTooLarge { got: ids.len(), max }.into());
        }
        let mut answers = Vec::with_capacity(ids.len());
        let mut misses = Vec::new();
        for (position, id) in ids.iter().enumerate() {
            match self.resolver.answer_from_memory(id) {
                Ok(InMemory::Answered(answer)) => answers.push(Some(Ok(answer))),
                Ok(InMemory::Missed(normalised)) => {
                    misses.push((position, normalised.into_owned()));
                    answers.push(None);
                }
                Err(error) => answers.push(Some(Err(error))),
            }
        }
        let fetched = futures::future::join_all(misses.iter().map(|(_, id)| self.resolver.answer_from_core(id))).await;
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
