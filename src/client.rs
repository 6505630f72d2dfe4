//! `merchant-edge lookup`: a small client that asks a running edge and prints each answer on one line.
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;

use crate::pb::merchant_lookup_client::MerchantLookupClient;
use crate::pb::{LookupRequest, LookupResponse, MerchantStatus, Reason, Source};

/// How to reach the edge: TLS when a CA is given, with a client certificate for mutual TLS.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM CA that signed the edge's certificate.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, for an edge that requires mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Accepts `host:port` or a full URL; `https` when TLS is asked for.
pub fn server_url(server: &str, tls: bool) -> String {
    match (server.contains("://"), tls) {
        (true, _) => server.to_owned(),
        (false, false) => format!("http://{server}"),
        (false, true) => format!("https://{server}"),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A client of the edge at `server` (host:port), over TLS when `tls` names a CA.
pub async fn connect(server: &str, tls: &ClientTls) -> Result<MerchantLookupClient<Channel>, String> {
    let url = server_url(server, tls.ca.is_some());
    let mut endpoint =
        Endpoint::from_shared(url.clone()).map_err(|e| format!("invalid server address {server}: {e}"))?;
    if let Some(ca) = &tls.ca {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(config).map_err(|e| format!("TLS settings: {e}"))?;
    }
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e} (is `merchant-edge serve` running?)"))?;
    Ok(MerchantLookupClient::new(channel))
}

/// Looks each ID up and prints one line per ID; returns how many lookups failed. `min_sequence` is the
/// consistency token sent with each lookup (0: none): the answers reflect every core change up to it.
pub async fn lookup_and_print(
    server: &str,
    tls: &ClientTls,
    ids: &[String],
    min_sequence: u64,
) -> Result<usize, String> {
    let mut client = connect(server, tls).await?;
    let mut failures = 0;
    for id in ids {
        let request = LookupRequest { merchant_id: id.clone(), min_sequence };
        let outcome = client.lookup(request).await.map(|r| r.into_inner());
        failures += usize::from(outcome.is_err());
        println!("{}", render(id, &outcome));
    }
    Ok(failures)
}

/// One line for one answer, readable by a person at a terminal.
pub fn render(requested: &str, outcome: &Result<LookupResponse, Status>) -> String {
    let response = match outcome {
        Err(status) => {
            let reason =
                status.metadata().get(crate::lookup::outcome::REASON_HEADER).and_then(|value| value.to_str().ok());
            let reason = reason.map(|reason| format!("  reason {reason}")).unwrap_or_default();
            return format!("{requested}  error {:?}: {}{reason}", status.code(), status.message());
        }
        Ok(response) => response,
    };
    let provenance = response.provenance.unwrap_or_default();
    let source = match Source::try_from(provenance.source).unwrap_or(Source::Unspecified) {
        Source::Cache => "cache",
        Source::NegativeCache => "negative cache",
        Source::Upstream => "bank core",
        Source::Stale => "STALE (core unreachable)",
        Source::Unspecified => "unknown source",
    };
    let reason = match Reason::try_from(response.reason) {
        Ok(Reason::Unspecified) => String::new(),
        Ok(reason) => format!("  reason {}", reason.as_str_name()),
        Err(_) => format!("  reason {}", response.reason),
    };
    let from = format!("[{source}, age {}ms, as of sequence {}]{reason}", provenance.age_ms, provenance.as_of_sequence);
    match &response.merchant {
        Some(m) if response.found => {
            let status = MerchantStatus::try_from(m.status).unwrap_or(MerchantStatus::Unspecified);
            let status = status.as_str_name().trim_start_matches("MERCHANT_STATUS_");
            format!(
                "{}  found  {status}  {:?}  mcc {}  {}  v{}  {from}",
                m.merchant_id, m.name, m.mcc, m.city, m.version
            )
        }
        _ => format!("{requested}  NOT FOUND (unknown to the bank core)  {from}"),
    }
}

/// Percent-encodes an ID for a URL path (IDs may hold spaces or full-width characters as typed).
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(byte).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Asks a running edge's admin endpoint to explain `id` and prints the checklist and the verdict, one
/// aligned line per step (the `checklist` module), or with `json` the admin endpoint's report as one
/// JSON document on one line, for scripts.
/// `token_file` holds the admin bearer token, for an edge with `admin.require_token` (or reached from
/// another machine). `min_sequence` adds a consistency token to check: the applied sequence against
/// it, and what a lookup carrying it would get.
pub async fn explain_and_print(
    admin: &str,
    id: &str,
    json: bool,
    token_file: Option<&Path>,
    min_sequence: Option<u64>,
) -> Result<(), String> {
    let token = match token_file {
        Some(path) => {
            Some(String::from_utf8(read(path)?).map_err(|_| format!("{} does not hold a text token", path.display()))?)
        }
        None => None,
    };
    let body = fetch_explanation(admin, id, token.as_deref().map(str::trim), min_sequence).await?;
    let explanation: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("unexpected answer from the admin endpoint: {e}"))?;
    if json {
        // The body as the endpoint sent it (re-serializing the parsed value would reorder its keys).
        println!("{}", body.trim_end());
    } else {
        print!("{}", crate::checklist::render(&explanation));
    }
    Ok(())
}

/// The admin endpoint's report for `id` (`GET /debug/merchants/{id}`, with `?min_sequence=N` when a
/// consistency token is given): a JSON document. `token` is sent as `Authorization: Bearer`.
pub async fn fetch_explanation(
    admin: &str,
    id: &str,
    token: Option<&str>,
    min_sequence: Option<u64>,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let admin = admin.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(|e| format!("cannot reach the admin endpoint {admin}: {e}"))?;
    let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let query = min_sequence.map(|sequence| format!("?min_sequence={sequence}")).unwrap_or_default();
    let request = format!(
        "GET /debug/merchants/{}{query} HTTP/1.1\r\nHost: {admin}\r\n{authorization}Connection: close\r\n\r\n",
        path_segment(id)
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("the admin endpoint sent no HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        // The guard's refusals say what to configure or send; pass that on.
        let error =
            serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["error"].as_str().map(str::to_owned));
        let status = head.lines().next().unwrap_or_default();
        return Err(match error {
            Some(error) => format!("the admin endpoint answered {status}: {error}"),
            None => format!("the admin endpoint answered {status}"),
        });
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{Merchant, Provenance};

    #[test]
    fn renders_each_kind_of_answer() {
        let found = LookupResponse {
            found: true,
            merchant: Some(Merchant {
                merchant_id: "898000000000097".into(),
                name: "Sunrise Bakery #97".into(),
                mcc: "5462".into(),
                city: "Suzhou".into(),
                status: MerchantStatus::PendingReview as i32,
                version: 1,
                updated_at: None,
            }),
            provenance: Some(Provenance { source: Source::Cache as i32, age_ms: 12, as_of_sequence: 3 }),
            reason: Reason::PendingReview as i32,
        };
        let line = render("898000000000097", &Ok(found));
        assert!(line.contains("PENDING_REVIEW") && line.contains("[cache, age 12ms, as of sequence 3]"), "{line}");
        assert!(line.ends_with("reason REASON_PENDING_REVIEW"), "{line}");
        let missing = LookupResponse {
            found: false,
            merchant: None,
            provenance: Some(Provenance { source: Source::NegativeCache as i32, age_ms: 0, as_of_sequence: 0 }),
            reason: Reason::UnknownToCore as i32,
        };
        assert!(render("898999999999999", &Ok(missing)).contains("NOT FOUND"));
        let error = render("x", &Err(Status::invalid_argument("rule `length`")));
        assert_eq!(error, "x  error InvalidArgument: rule `length`");
        let status: Status =
            crate::lookup::LookupError::InvalidId(crate::merchant_id::IdError::Empty { expected: "15 digits".into() })
                .into();
        assert!(render("", &Err(status)).ends_with("reason REASON_ID_EMPTY"));
        assert_eq!(server_url("127.0.0.1:50051", false), "http://127.0.0.1:50051");
        assert_eq!(path_segment("８98 0/1"), "%EF%BC%9898%200%2F1");
        assert_eq!(server_url("edge.bank:50051", true), "https://edge.bank:50051");
    }
}
