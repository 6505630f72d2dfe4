//! Accepting terminal connections without spinning: an accept error that repeats at once (EMFILE when
//! file descriptors run out, for instance) pauses the loop, doubling up to a second, instead of
//! burning a core and flooding the log.
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// How long the next failed accept waits.
pub struct Pause(Duration);

impl Default for Pause {
    fn default() -> Self {
        Self(FIRST_PAUSE)
    }
}

/// The next connection, pausing after each failed accept.
pub async fn accept(listener: &TcpListener, pause: &mut Pause) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                pause.0 = FIRST_PAUSE;
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(error) => {
                tracing::warn!(%error, pause = ?pause.0, "accept failed; pausing before the next one");
                tokio::time::sleep(pause.0).await;
                pause.0 = (pause.0 * 2).min(LONGEST_PAUSE);
            }
        }
    }
}

/// Plaintext connections for tonic's `serve_with_incoming_shutdown`.
pub fn plaintext(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> {
    futures::stream::unfold((listener, Pause::default()), |(listener, mut pause)| async move {
        let (stream, _) = accept(&listener, &mut pause).await;
        Some((Ok(stream), (listener, pause)))
    })
}
