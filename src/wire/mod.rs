//! The lookup contract as the server encodes it: `proto/merchant/v1/lookup.proto` with each answer's
//! `merchant` field retyped to bytes by `build.rs` (the same contract on the wire), so a merchant is
//! encoded once per version and every answer shares the bytes. Also the snapshot reader's twin of
//! `ListMerchants` (see `build.rs`): listed merchants arrive as their bytes and are stored as they came,
//! after [`ListedMerchants::check`] has found them well formed.
use bytes::Bytes;
use prost::Message;

use crate::pb;

#[allow(clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/wire/merchant.v1.rs"));
}
pub use generated::{
    merchant_lookup_server, BatchLookupRequest, BatchLookupResponse, BatchLookupResult, LookupError, LookupRequest,
    LookupResponse, Provenance,
};

mod listed;
pub use listed::{ListedMerchant, ListedMerchants, ListingClient, ListingPage, ListingRequest, MalformedMerchant};

/// A merchant encoded once as `merchant.v1.Merchant` protobuf; every answer that carries it shares the
/// bytes (a reference count, no copy until the socket write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedMerchant {
    bytes: Bytes,
    /// The record's `status`, kept beside the bytes: answers derive their reason from it.
    status: i32,
}

impl EncodedMerchant {
    /// Encodes `merchant` once.
    pub fn encode(merchant: &pb::Merchant) -> Self {
        Self { bytes: Bytes::from(merchant.encode_to_vec()), status: merchant.status }
    }

    /// Bytes that already hold an encoded `merchant.v1.Merchant` with this `status` (as the positive
    /// store keeps them).
    pub fn from_parts(bytes: Bytes, status: i32) -> Self {
        Self { bytes, status }
    }

    /// The merchant's status (`merchant.v1.MerchantStatus` value).
    pub fn status(&self) -> i32 {
        self.status
    }

    /// The record itself, for the few places that read fields (not the answer path).
    pub fn decode(&self) -> pb::Merchant {
        pb::Merchant::decode(self.bytes.clone()).expect("the edge encoded these bytes itself")
    }

    /// The encoded bytes (shared, not copied).
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The encoded bytes, moved out (an answer that is the only holder sends them without a clone).
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The encoded bytes, borrowed: for writers that copy them anyway (a clone of a freshly encoded
    /// buffer would first promote it to a shared, separately allocated one).
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// Heap bytes held for the encoded record.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the encoding is empty (a merchant with every field at its default).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::dataset::synthetic_merchant;

    #[test]
    fn the_wire_twin_decodes_as_the_public_contract() {
        let merchant = synthetic_merchant(97);
        let encoded = EncodedMerchant::encode(&merchant);
        assert_eq!(encoded.decode(), merchant);
        let wire = LookupResponse {
            found: true,
            merchant: encoded.bytes(),
            provenance: Some(Provenance { source: 1, age_ms: 12, as_of_sequence: 3 }),
            reason: 0,
        };
        let public = pb::LookupResponse::decode(wire.encode_to_vec().as_slice()).unwrap();
        assert_eq!(public.merchant, Some(merchant));
        assert_eq!(public.provenance.unwrap().age_ms, 12);
        let not_found = LookupResponse { found: false, merchant: Bytes::new(), provenance: None, reason: 1 };
        assert_eq!(pb::LookupResponse::decode(not_found.encode_to_vec().as_slice()).unwrap().merchant, None);
    }
}
