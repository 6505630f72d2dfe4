//! Compiles the protos with protox (pure Rust, so no system `protoc` is needed): the public contracts,
//! with an encoded descriptor set per server kept for gRPC server reflection, and the server's twin of the
//! lookup contract, derived here from the same descriptors with each `merchant` field retyped to
//! `bytes` (protobuf encodes an embedded message and bytes alike, so the twin is the same contract on
//! the wire and lets the server send merchants it encoded once).
use prost::Message;
use prost_types::field_descriptor_proto::Type;

const LOOKUP_PROTO: &str = "merchant/v1/lookup.proto";
/// Messages whose `merchant` field the server sends pre-encoded.
const ANSWERS: [&str; 2] = ["LookupResponse", "BatchLookupResult"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["proto/merchant/v1/lookup.proto", "proto/merchant/v1/core.proto"];
    let descriptors = protox::compile(protos, ["proto"])?;
    // One set per server for reflection: each proto with only its own imports, so a port's reflection
    // holds the files its services need and nothing another server implements.
    for (proto, set) in [(protos[0], "lookup_descriptor.bin"), (protos[1], "core_descriptor.bin")] {
        std::fs::write(out_dir.join(set), protox::compile([proto], ["proto"])?.encode_to_vec())?;
    }

    let mut wire = descriptors.clone();
    wire.file.retain(|file| file.name() == LOOKUP_PROTO || file.package() == "google.protobuf");
    let lookup = wire.file.iter_mut().find(|file| file.name() == LOOKUP_PROTO).ok_or("lookup.proto missing")?;
    for message in lookup.message_type.iter_mut().filter(|m| ANSWERS.contains(&m.name())) {
        let field = message.field.iter_mut().find(|f| f.name() == "merchant").ok_or("merchant field missing")?;
        field.set_type(Type::Bytes);
        field.type_name = None;
    }
    tonic_prost_build::configure().compile_fds(descriptors)?;
    let wire_dir = out_dir.join("wire");
    std::fs::create_dir_all(&wire_dir)?;
    tonic_prost_build::configure().build_client(false).bytes(".").out_dir(&wire_dir).compile_fds(wire)?;

    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
