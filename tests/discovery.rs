//! What tools discover without a proto file: server reflection (v1 and v1alpha) and gRPC health.
mod common;

use std::collections::BTreeSet;

use common::*;
use merchant_edge::sim::Simulator;
use prost::Message;
use prost_types::FileDescriptorProto;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::{v1, v1alpha};

const SERVICE: &str = "merchant.v1.MerchantLookup";

async fn edge() -> (Core, merchant_edge::server::RunningEdge) {
    let core = Core::start_with(Simulator::new(10, 10), loopback().await).await;
    let edge = start_edge(edge_config(&core.url())).await;
    (core, edge)
}

#[tokio::test]
async fn reflection_v1_lists_and_describes_the_service() {
    let (_core, edge) = edge().await;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel(edge.grpc_addr).await);
    let list = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let describe = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::FileContainingSymbol(SERVICE.into())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([list, describe])).await.unwrap().into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(services)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&SERVICE.to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors")
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_service_for_older_tools() {
    let (_core, edge) = edge().await;
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel(edge.grpc_addr).await);
    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([list])).await.unwrap().into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(services)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    assert!(services.service.iter().any(|s| s.name == SERVICE), "{:?}", services.service);
}

/// A reflection client for one protocol version: the services it lists, each described the way
/// grpcurl's `describe` does (the file containing the symbol, then every import by file name).
macro_rules! reflection_client {
    ($name:ident, $version:ident) => {
        async fn $name(addr: std::net::SocketAddr) -> BTreeSet<String> {
            use $version::server_reflection_request::MessageRequest;
            use $version::server_reflection_response::MessageResponse;
            let mut client = $version::server_reflection_client::ServerReflectionClient::new(channel(addr).await);
            let mut ask = async |request: MessageRequest| {
                let request = $version::ServerReflectionRequest { host: String::new(), message_request: Some(request) };
                let mut responses =
                    client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
                responses.next().await.unwrap().unwrap().message_response.unwrap()
            };
            let MessageResponse::ListServicesResponse(list) = ask(MessageRequest::ListServices(String::new())).await
            else {
                panic!("expected a service list")
            };
            let services: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
            for service in &services {
                let mut pending = vec![MessageRequest::FileContainingSymbol(service.clone())];
                let mut seen = BTreeSet::new();
                while let Some(request) = pending.pop() {
                    let what = format!("{request:?} (describing {service})");
                    let MessageResponse::FileDescriptorResponse(files) = ask(request).await else {
                        panic!("{what}: expected file descriptors")
                    };
                    for encoded in files.file_descriptor_proto {
                        let file = FileDescriptorProto::decode(encoded.as_slice()).unwrap();
                        if seen.insert(file.name().to_owned()) {
                            pending.extend(file.dependency.iter().cloned().map(MessageRequest::FileByFilename));
                        }
                    }
                }
            }
            services
        }
    };
}
reflection_client!(services_v1, v1);
reflection_client!(services_v1alpha, v1alpha);

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

const REFLECTION: [&str; 2] = ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

#[tokio::test]
async fn reflection_on_the_edge_lists_exactly_what_it_serves_and_describes_each() {
    let (_core, edge) = edge().await;
    let expected = names(&[&[SERVICE, "grpc.health.v1.Health"][..], &REFLECTION].concat());
    assert_eq!(services_v1(edge.grpc_addr).await, expected, "v1");
    assert_eq!(services_v1alpha(edge.grpc_addr).await, expected, "v1alpha");
}

#[tokio::test]
async fn reflection_on_the_core_sim_lists_exactly_what_it_serves_and_describes_each() {
    let core = Core::start(10).await;
    let expected = names(&[&["merchant.v1.MerchantCore", "merchant.v1.CoreAdmin"][..], &REFLECTION].concat());
    assert_eq!(services_v1(core.addr).await, expected, "v1");
    assert_eq!(services_v1alpha(core.addr).await, expected, "v1alpha");
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    let (_core, edge) = edge().await;
    let mut health = HealthClient::new(channel(edge.grpc_addr).await);
    for service in ["", SERVICE] {
        let response = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(response.status, ServingStatus::Serving as i32, "{service:?}");
    }
}
