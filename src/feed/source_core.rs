//! The core's own `WatchChanges` stream as a notice source: one watch per edge, straight from the core.
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tonic::transport::Channel;
use tonic::Code;

use super::source::{Items, NoticeSource, SourceEnd, SourceItem};
use super::ResyncReason;
use crate::pb::merchant_core_client::MerchantCoreClient;
use crate::pb::WatchChangesRequest;
use crate::upstream::{describe_status, INCARNATION_HEADER};

/// Follows `WatchChanges` of one core.
pub struct CoreSource {
    core: MerchantCoreClient<Channel>,
}

impl CoreSource {
    /// A source reading `core`'s change stream.
    pub fn new(core: MerchantCoreClient<Channel>) -> Self {
        Self { core }
    }
}

/// OUT_OF_RANGE is the core saying it no longer holds the history asked for; anything else passes.
fn end_of(status: &tonic::Status) -> SourceEnd {
    if status.code() == Code::OutOfRange {
        SourceEnd::Resync(ResyncReason::TooOld)
    } else {
        SourceEnd::Reconnect(describe_status(status))
    }
}

impl NoticeSource for CoreSource {
    fn kind(&self) -> &'static str {
        "core"
    }

    fn open<'a>(&'a mut self, after: u64, incarnation: Option<&'a str>) -> BoxFuture<'a, Result<Items, SourceEnd>> {
        async move {
            let response =
                self.core.watch_changes(WatchChangesRequest { after_sequence: after }).await.map_err(|s| end_of(&s))?;
            let announced = response.metadata().get(INCARNATION_HEADER).and_then(|value| value.to_str().ok());
            if let (Some(announced), Some(known)) = (announced, incarnation) {
                if announced != known {
                    return Err(SourceEnd::Resync(ResyncReason::CoreRestarted));
                }
            }
            let notices = response.into_inner().map(|message| match message {
                Ok(notice) => SourceItem::Notice(notice),
                Err(status) => match end_of(&status) {
                    SourceEnd::Resync(reason) => SourceItem::Resync { reason, continues_from: None },
                    SourceEnd::Reconnect(why) => SourceItem::Failed(why),
                },
            });
            let closed = futures::stream::once(async { SourceItem::Failed("the core closed the stream".into()) });
            Ok(notices.chain(closed).boxed())
        }
        .boxed()
    }
}
