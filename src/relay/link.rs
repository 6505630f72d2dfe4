//! What a NATS client of this crate (a relay, an edge's NATS source) tells operators about its
//! connection: whether it is up, which server of the cluster it is on, and how often it reconnected.
//! A cluster fails clients over between its servers, so "connected" alone does not say where to look
//! when one server misbehaves.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use async_nats::{Client, Event};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

/// The server a client is connected to, as the server introduced itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedServer {
    /// Its `server_name` (the cluster's peers and `/routez` use it too).
    pub name: String,
    /// `host:port` it announced for clients.
    pub address: String,
    /// Its cluster's name, when it is part of one.
    pub cluster: Option<String>,
}

impl std::fmt::Display for ConnectedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}", self.name, self.address)?;
        if let Some(cluster) = &self.cluster {
            write!(f, ", cluster {cluster}")?;
        }
        f.write_str(")")
    }
}

/// Labels of `…_nats_server_info`: which server the connection is on (one series, 1, while connected).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServerLabels {
    server_name: String,
    server: String,
    cluster: String,
}

/// One client's connection state, fed by its connection events.
#[derive(Debug)]
pub struct NatsLink {
    client: OnceLock<Client>,
    connected: watch::Sender<bool>,
    connected_once: AtomicBool,
    reconnects: AtomicU64,
}

impl Default for NatsLink {
    fn default() -> Self {
        Self {
            client: OnceLock::new(),
            connected: watch::Sender::new(false),
            connected_once: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
        }
    }
}

impl NatsLink {
    /// Takes one connection event; returns whether it was a reconnect (a connect after the first).
    pub(super) fn observe(&self, event: &Event) -> bool {
        match event {
            Event::Connected => {
                self.connected.send_replace(true);
                let again = self.connected_once.swap(true, Ordering::Relaxed);
                if again {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                again
            }
            Event::Disconnected | Event::Closed => {
                self.connected.send_replace(false);
                false
            }
            _ => false,
        }
    }

    /// The client whose server is reported (set once, right after connecting).
    pub(super) fn attach(&self, client: Client) {
        let _ = self.client.set(client);
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Follows the connection state (true while up).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    /// Connects after the first one: each is a failover or a server coming back.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The server the connection is on, while it is up.
    pub fn server(&self) -> Option<ConnectedServer> {
        if !self.is_connected() {
            return None;
        }
        // The client updates its server info just after it reports the connect: read it when asked.
        let info = self.client.get()?.try_server_info()?;
        Some(ConnectedServer {
            name: info.server_name,
            address: format!("{}:{}", info.host, info.port),
            cluster: info.cluster.filter(|cluster| !cluster.is_empty()),
        })
    }

    /// "connected to NAME (HOST:PORT, cluster C), N reconnects" or "not connected, N reconnects".
    pub fn describe(&self) -> String {
        let reconnects = crate::text::count(self.reconnects(), "reconnect", "reconnects");
        match self.server() {
            Some(server) => format!("connected to {server}, {reconnects}"),
            None if self.is_connected() => format!("connected, {reconnects}"),
            None => format!("not connected, {reconnects}"),
        }
    }

    /// Puts the server the connection is on into `family` (cleared while down).
    pub fn export_server(&self, family: &Family<ServerLabels, Gauge>) {
        family.clear();
        if let Some(server) = self.server() {
            let labels = ServerLabels {
                server_name: server.name,
                server: server.address,
                cluster: server.cluster.unwrap_or_default(),
            };
            family.get_or_create(&labels).set(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_connect_is_not_a_reconnect_and_every_later_one_is() {
        let link = NatsLink::default();
        assert!(!link.observe(&Event::Connected));
        assert!(link.is_connected());
        assert!(!link.observe(&Event::Disconnected));
        assert!(!link.is_connected());
        assert!(link.observe(&Event::Connected));
        assert!(link.observe(&Event::Connected));
        assert_eq!(link.reconnects(), 2);
        assert_eq!(link.describe(), "connected, 2 reconnects", "no client attached: no server to name");
        link.observe(&Event::Closed);
        assert_eq!(link.describe(), "not connected, 2 reconnects");
    }
}
