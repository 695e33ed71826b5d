//! Baseline for `make bench`: a bare websocket echo server (tokio-tungstenite with its
//! defaults) that sends every text frame back. It runs as its own process, as the
//! gateway does, so that both pay the same scheduling and loopback costs.

use futures::{SinkExt as _, StreamExt as _};

fn main() -> std::io::Result<()> {
    omnigate_e2e::bench::serve_baseline(18081, echo)
}

/// Serves one connection: the handshake, then every text frame sent back.
async fn echo(stream: tokio::net::TcpStream) {
    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(frame)) = socket.next().await {
        if frame.is_text() && socket.send(frame).await.is_err() {
            return;
        }
    }
}
