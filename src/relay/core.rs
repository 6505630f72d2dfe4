//! The core side: opening `WatchChanges` from a position, and reading where the core is now (its head
//! and incarnation) for stall checks and for resuming after "too old".
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Streaming};

use super::message::Position;
use crate::pb::merchant_core_client::MerchantCoreClient;
use crate::pb::{ChangeNotice, ListMerchantsRequest, WatchChangesRequest};
use crate::upstream::{describe_status, INCARNATION_HEADER};

/// Why a watch could not be opened or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchError {
    /// OUT_OF_RANGE: the core no longer keeps the history after the requested sequence, or never had
    /// it (its head is behind: a new history).
    OutOfRange(String),
    /// Anything else: retry from the stream's tail after a pause.
    Failed(String),
}

impl WatchError {
    fn from_status(status: &tonic::Status) -> Self {
        let described = describe_status(status);
        if status.code() == Code::OutOfRange {
            Self::OutOfRange(described)
        } else {
            Self::Failed(described)
        }
    }
}

/// An open watch.
pub struct Watch {
    /// The incarnation the core announced in the response headers, if it did.
    pub incarnation: Option<String>,
    notices: Streaming<ChangeNotice>,
}

impl Watch {
    /// The next notice; `Ok(None)` when the core closed the stream.
    pub async fn next(&mut self) -> Result<Option<ChangeNotice>, WatchError> {
        self.notices.message().await.map_err(|status| WatchError::from_status(&status))
    }
}

#[derive(Clone)]
pub struct Core {
    client: MerchantCoreClient<Channel>,
    /// Longest wait for a head probe.
    probe_timeout: Duration,
}

impl Core {
    pub fn new(client: MerchantCoreClient<Channel>, probe_timeout: Duration) -> Self {
        Self { client, probe_timeout }
    }

    /// Streams every change after `after` (0: the whole kept history), then live ones.
    pub async fn watch(&self, after: u64) -> Result<Watch, WatchError> {
        let response = self
            .client
            .clone()
            .watch_changes(WatchChangesRequest { after_sequence: after })
            .await
            .map_err(|status| WatchError::from_status(&status))?;
        let incarnation = response
            .metadata()
            .get(INCARNATION_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty())
            .map(str::to_owned);
        Ok(Watch { incarnation, notices: response.into_inner() })
    }

    /// Where the core is now: one single-merchant snapshot page says its sequence and incarnation.
    pub async fn position(&self) -> Result<Position, String> {
        let mut request = tonic::Request::new(ListMerchantsRequest { page_size: 1, page_token: String::new() });
        request.set_timeout(self.probe_timeout);
        let mut client = self.client.clone();
        let call = client.list_merchants(request);
        let page = tokio::time::timeout(self.probe_timeout, call)
            .await
            .map_err(|_| format!("the core did not answer a head probe within {:?}", self.probe_timeout))?
            .map_err(|status| describe_status(&status))?
            .into_inner();
        Ok(Position { incarnation: page.incarnation, sequence: page.as_of_sequence })
    }
}
