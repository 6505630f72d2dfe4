//! Where gRPC calls run (`server.runtime`).
//!
//! `"per-core"` serves from `server.threads` single-threaded tokio runtimes, each on its own OS thread
//! and accepting on its own `SO_REUSEPORT` socket bound to `server.listen`: the kernel spreads new
//! connections over the sockets, and a connection's calls are then served on the thread that accepted
//! it, with no task moving between cores and no worker waking another (what the multi-thread scheduler
//! spends most of a cached lookup's CPU on; see docs/performance.md). Background work (the change
//! feed, fills, refresh-ahead, reloads, the admin endpoint, the embedded core) stays on the main
//! multi-thread runtime, so a serving runtime's queue holds only request work.
//!
//! `"shared"` serves from the main multi-thread runtime, as a stock tonic server does: one busy
//! connection can use every core.
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

/// Connections each socket may have waiting to be accepted (what `TcpListener::bind` uses).
const BACKLOG: u32 = 1024;

/// Why a serving runtime could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start serving runtime {index}: {source}")]
    /// The runtime or its socket could not be set up.
    Start {
        /// Which runtime (0-based).
        index: usize,
        /// Why.
        source: io::Error,
    },
    #[error("serving runtime {index}: {source}")]
    /// Its gRPC server failed.
    Serve {
        /// Which runtime (0-based).
        index: usize,
        /// Why.
        source: tonic::transport::Error,
    },
    #[error("serving runtime {index} stopped without a result (its thread panicked)")]
    /// Its thread panicked.
    Panicked {
        /// Which runtime (0-based).
        index: usize,
    },
}

/// The terminal-facing listening sockets: one per serving runtime, all on one address.
pub struct GrpcListeners(Vec<TcpListener>);

impl From<TcpListener> for GrpcListeners {
    /// One socket: served by one runtime (per-core) or by the shared one.
    fn from(listener: TcpListener) -> Self {
        Self(vec![listener])
    }
}

impl GrpcListeners {
    /// Binds `count` listening sockets to `addr`. More than one are bound with `SO_REUSEPORT`, the
    /// first one first, so that port 0 resolves once and the rest join the port it got. Must be called
    /// within a tokio runtime (the sockets are registered with it until they are handed over).
    pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Self> {
        if count <= 1 {
            let socket = new_socket(addr)?;
            socket.bind(addr)?;
            return Ok(Self(vec![socket.listen(BACKLOG)?]));
        }
        if addr.port() != 0 {
            // SO_REUSEPORT would let this edge share a port another process (a second instance by
            // mistake) already listens on, each silently getting part of the connections; a plain
            // bind first fails as it does without SO_REUSEPORT. A port chosen by the kernel (0) is
            // never in use.
            new_socket(addr)?.bind(addr)?;
        }
        let first = reuse_port_listener(addr)?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..count {
            listeners.push(reuse_port_listener(addr)?);
        }
        Ok(Self(listeners))
    }

    /// The address every socket listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.first().ok_or_else(|| io::Error::other("no listening socket"))?.local_addr()
    }

    /// How many sockets there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_inner(self) -> Vec<TcpListener> {
        self.0
    }
}

fn new_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As `TcpListener::bind` does: a restart can bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

fn reuse_port_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = new_socket(addr)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The per-core runtimes while they serve. Dropping it (or [`Self::cut_off`]) stops them at once,
/// connections and all, so an edge dropped without a drain does not leave threads serving.
pub(crate) struct PerCore {
    runtimes: Vec<Handle>,
    cut: watch::Sender<bool>,
}

impl PerCore {
    /// The serving runtimes.
    pub fn runtimes(&self) -> &[Handle] {
        &self.runtimes
    }

    /// Stops every runtime now: calls still open are cut off.
    pub fn cut_off(&self) {
        self.cut.send_replace(true);
    }
}

impl Drop for PerCore {
    fn drop(&mut self) {
        self.cut_off();
    }
}

/// Starts one single-threaded runtime per listener, each on its own thread, each serving
/// `serve(listener)` there (the gRPC server, ending when the drain signal inside it fires). Returns
/// the runtimes and a future that ends with the first failure, or once every runtime has finished.
pub(crate) fn serve_per_core<S, F>(
    listeners: Vec<TcpListener>,
    serve: S,
) -> Result<(PerCore, impl Future<Output = Result<(), RuntimeError>> + Send + 'static), RuntimeError>
where
    S: Fn(TcpListener) -> F + Clone + Send + 'static,
    F: Future<Output = Result<(), tonic::transport::Error>>,
{
    let cut = watch::Sender::new(false);
    let mut runtimes = Vec::with_capacity(listeners.len());
    let mut finished = FuturesUnordered::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let start = move |source| RuntimeError::Start { index, source };
        // Handed over as a std socket: a tokio socket belongs to the runtime it was registered with.
        let listener = listener.into_std().map_err(start)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(start)?;
        runtimes.push(runtime.handle().clone());
        let (done, result) = oneshot::channel();
        let (serve, mut cut) = (serve.clone(), cut.subscribe());
        std::thread::Builder::new()
            .name(format!("grpc-{index}"))
            .spawn(move || {
                let outcome = runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).map_err(start)?;
                    tokio::select! {
                        served = serve(listener) => served.map_err(|source| RuntimeError::Serve { index, source }),
                        _ = cut.wait_for(|cut| *cut) => Ok(()),
                    }
                });
                // Whatever is left (connections cut off) is dropped without waiting.
                runtime.shutdown_background();
                let _ = done.send(outcome);
            })
            .map_err(start)?;
        finished.push(async move { result.await.unwrap_or(Err(RuntimeError::Panicked { index })) });
    }
    let all_finished = async move {
        while let Some(outcome) = finished.next().await {
            outcome?;
        }
        Ok(())
    };
    Ok((PerCore { runtimes, cut }, all_finished))
}
