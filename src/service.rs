//! The terminal-facing `merchant.v1.MerchantLookup` gRPC service.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::config::LiveConfig;
use crate::pb::merchant_lookup_server::MerchantLookup;
use crate::pb::{
    BatchLookupRequest, BatchLookupResponse, BatchLookupResult, LookupError as ResultError, LookupRequest,
    LookupResponse, Provenance,
};
use crate::resolver::{Answer, Resolver};
use crate::status::{lookup_code, CallError};

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

impl From<Answer> for LookupResponse {
    fn from(answer: Answer) -> Self {
        Self { found: answer.merchant.is_some(), provenance: Some(provenance(&answer)), merchant: answer.merchant }
    }
}

#[tonic::async_trait]
impl MerchantLookup for LookupService {
    async fn lookup(&self, request: Request<LookupRequest>) -> Result<Response<LookupResponse>, Status> {
        let answer = self.resolver.lookup(&request.get_ref().merchant_id).await?;
        Ok(Response::new(answer.into()))
    }

    async fn batch_lookup(
        &self,
        request: Request<BatchLookupRequest>,
    ) -> Result<Response<BatchLookupResponse>, Status> {
        let ids = request.into_inner().merchant_ids;
        let max = self.config.load().server.max_batch_size.get() as usize;
        if ids.len() > max {
            return Err(CallError::BatchTooLarge { got: ids.len(), max }.into());
        }
        let answers = futures::future::join_all(ids.iter().map(|id| self.resolver.lookup(id))).await;
        let results = ids
            .into_iter()
            .zip(answers)
            .map(|(requested_merchant_id, answer)| match answer {
                Ok(answer) => BatchLookupResult {
                    found: answer.merchant.is_some(),
                    provenance: Some(provenance(&answer)),
                    merchant: answer.merchant,
                    requested_merchant_id,
                    error: None,
                },
                Err(error) => BatchLookupResult {
                    requested_merchant_id,
                    error: Some(ResultError { code: lookup_code(&error) as i32, message: error.to_string() }),
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(BatchLookupResponse { results }))
    }
}
