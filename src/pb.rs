//! Generated protobuf and gRPC code for `merchant.v1`, and the descriptor set served by reflection.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("merchant.v1");

/// Encoded `FileDescriptorSet` of every proto in `proto/` and their imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/merchant_descriptor.bin"));
