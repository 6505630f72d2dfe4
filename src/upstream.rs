//! The client side of the core contract: point reads with a deadline, and errors that say the core
//! failed — never confused with "the merchant does not exist".
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::pb::merchant_core_client::MerchantCoreClient;
use crate::pb::{GetMerchantRequest, Merchant};
use crate::wire::ListingClient;

/// Initial-metadata key of WatchChanges responses naming the core's history incarnation.
pub const INCARNATION_HEADER: &str = "x-core-incarnation";

/// HTTP/2 receive window per call from the core: a whole default snapshot page (5,000 merchants of
/// about 100 bytes) fits.
const SNAPSHOT_STREAM_WINDOW: u32 = 1 << 20;

/// Why the core gave no answer. Cloneable because one failure is shared by every coalesced caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("the bank core did not answer within {0:?}; retry later")]
    /// The core did not answer in time.
    Timeout(Duration),
    #[error("the bank core is unreachable or failing ({0}); retry later")]
    /// The core is unreachable or answered with an error.
    Unavailable(String),
    #[error("the call's deadline passed before the bank core answered")]
    /// The caller's deadline passed first.
    DeadlineExceeded,
}

/// What the core said about one merchant.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreAnswer {
    /// `None` when the core does not know the ID.
    pub merchant: Option<Merchant>,
    /// Every change up to this sequence is reflected in the answer.
    pub as_of_sequence: u64,
}

#[derive(Clone)]
/// The client of the core's MerchantCore contract.
pub struct CoreClient {
    client: MerchantCoreClient<Channel>,
    /// The same connection, for snapshot pages kept as the core encoded them.
    listing: ListingClient<Channel>,
}

impl CoreClient {
    /// A client that connects on first use and reconnects after failures, so the edge starts (and keeps
    /// serving from memory) while the core is down.
    pub fn connect_lazy(url: &str, connect_timeout: Duration) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("invalid upstream endpoint {url}: {e}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // A snapshot page is hundreds of kilobytes; with HTTP/2's default 64 KiB windows each page
            // waited for several window updates, and a warm start for thousands of them.
            .initial_stream_window_size(SNAPSHOT_STREAM_WINDOW)
            .initial_connection_window_size(SNAPSHOT_STREAM_WINDOW * 2)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        Ok(Self { client: MerchantCoreClient::new(channel.clone()), listing: ListingClient::new(channel) })
    }

    /// The underlying gRPC client, for the change feed.
    pub fn grpc(&self) -> MerchantCoreClient<Channel> {
        self.client.clone()
    }

    /// A client of the same connection for snapshot reads (see [`crate::wire::ListedMerchant`]).
    pub fn listing(&self) -> ListingClient<Channel> {
        self.listing.clone()
    }

    /// Reads one merchant, giving up after `timeout` (the config's `upstream.timeout` at call time).
    pub async fn get_merchant(&self, merchant_id: &str, timeout: Duration) -> Result<CoreAnswer, UpstreamError> {
        let mut request = tonic::Request::new(GetMerchantRequest { merchant_id: merchant_id.to_owned() });
        request.set_timeout(timeout);
        let mut client = self.client.clone();
        let call = client.get_merchant(request);
        let response = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))?
            .map_err(|status| match status.code() {
                // The call's own grpc-timeout expiring (tonic's client reports it as CANCELLED) or the
                // core giving up on it: a timeout, which the deadline logic above treats as such.
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => UpstreamError::Timeout(timeout),
                _ => UpstreamError::Unavailable(describe_status(&status)),
            })?
            .into_inner();
        let merchant = match (response.found, response.merchant) {
            (true, Some(merchant)) if merchant.merchant_id == merchant_id => Some(merchant),
            (true, Some(merchant)) => {
                let other = merchant.merchant_id;
                return Err(UpstreamError::Unavailable(format!("core answered for merchant {other:?} instead")));
            }
            (true, None) => return Err(UpstreamError::Unavailable("core answered found without a merchant".into())),
            (false, _) => None,
        };
        Ok(CoreAnswer { merchant, as_of_sequence: response.as_of_sequence })
    }
}

/// A short description of a failed core call, for logs and for the caller's error message.
pub fn describe_status(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}
