//! Baseline for `make bench`: a bare websocket echo server (tokio-tungstenite with its
//! defaults) that sends every text frame back. It runs as its own process, as the
//! gateway does, so that both pay the same scheduling and loopback costs.

use futures::{SinkExt as _, StreamExt as _};
use std::net::SocketAddr;

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(18081);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(SocketAddr::from(([127, 0, 0, 1], port))))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(frame)) = socket.next().await {
                if frame.is_text() && socket.send(frame).await.is_err() {
                    return;
                }
            }
        });
    }
}
