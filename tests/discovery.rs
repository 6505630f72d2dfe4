//! What tools discover without a proto file: server reflection (v1 and v1alpha) and gRPC health.
mod common;

use common::*;
use merchant_edge::sim::Simulator;
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

#[tokio::test]
async fn grpc_health_reports_serving() {
    let (_core, edge) = edge().await;
    let mut health = HealthClient::new(channel(edge.grpc_addr).await);
    for service in ["", SERVICE] {
        let response = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(response.status, ServingStatus::Serving as i32, "{service:?}");
    }
}
