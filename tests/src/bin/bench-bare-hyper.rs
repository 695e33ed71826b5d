//! Baseline for `make bench`: a bare hyper server that reads each request body and
//! answers 200. The gateway is measured against it in the same run.

use std::net::SocketAddr;

fn main() -> std::io::Result<()> {
    omnigate_e2e::bench::serve_baseline(18080, serve)
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |request: hyper::Request<hyper::body::Incoming>| async move {
                    use http_body_util::BodyExt;
                    let _body = request.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                },
            );
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
