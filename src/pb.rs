//! Generated protobuf and gRPC code for `merchant.v1`, and the descriptor sets served by reflection.
#[allow(clippy::all)]
mod generated {
    tonic::include_proto!("merchant.v1");
}
pub use generated::*;

/// Encoded `FileDescriptorSet` of `lookup.proto` and its imports: what the edge's reflection serves.
pub const LOOKUP_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lookup_descriptor.bin"));

/// Encoded `FileDescriptorSet` of `core.proto` and its imports (`lookup.proto` among them, for the
/// `Merchant` message): what the simulator's reflection serves.
pub const CORE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/core_descriptor.bin"));

/// The reflection services' own names; both are served wherever reflection is.
const REFLECTION_SERVICES: [&str; 2] = [
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
];

/// Server reflection in both versions (older ghz, grpcurl and Postman speak only
/// `grpc.reflection.v1alpha`), listing exactly `services` and the two reflection services: without
/// explicit names tonic-reflection would list every service in the registered files, including ones
/// this port does not serve. `descriptor_sets` must hold the files defining `services` and their
/// imports, so each listed service can be described.
pub fn reflection_services(
    descriptor_sets: &[&'static [u8]],
    services: &[&str],
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
) {
    let builder = || {
        // Each version registers only its own proto by default; both are registered so that either
        // version can describe both listed reflection services.
        let mut builder = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
        for set in descriptor_sets {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        for name in services.iter().chain(&REFLECTION_SERVICES) {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let invalid = "the embedded descriptor sets are valid";
    (builder().build_v1().expect(invalid), builder().build_v1alpha().expect(invalid))
}
