//! Compiles the protos with protox (pure Rust, so no system `protoc` is needed): the public contracts,
//! with their encoded descriptor set kept for gRPC server reflection, and the server-side twin of the
//! lookup contract (`src/wire.proto`) whose merchant fields are pre-encoded bytes.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["proto/merchant/v1/lookup.proto", "proto/merchant/v1/core.proto"];
    let descriptors = protox::compile(protos, ["proto"])?;
    std::fs::write(out_dir.join("merchant_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;

    let wire_dir = out_dir.join("wire");
    std::fs::create_dir_all(&wire_dir)?;
    let wire = protox::compile(["wire.proto"], ["src"])?;
    tonic_prost_build::configure().build_client(false).bytes(".").out_dir(&wire_dir).compile_fds(wire)?;

    for proto in protos.into_iter().chain(["src/wire.proto"]) {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
