//! Generated protobuf and gRPC code for `merchant.v1`, and the descriptor set served by reflection.
#[allow(clippy::all)]
mod generated {
    tonic::include_proto!("merchant.v1");
}
pub use generated::*;

/// Encoded `FileDescriptorSet` of every proto in `proto/` and their imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/merchant_descriptor.bin"));

/// Server reflection over these protos (and the health protos), in both versions: older ghz, grpcurl
/// and Postman speak only `grpc.reflection.v1alpha`.
pub fn reflection_services() -> (
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
) {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let invalid = "the embedded descriptor sets are valid";
    (builder().build_v1().expect(invalid), builder().build_v1alpha().expect(invalid))
}
