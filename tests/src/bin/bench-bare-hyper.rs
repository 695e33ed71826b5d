//! Baseline for `make bench`: a bare hyper server that reads each request body and
//! answers 200. The gateway is measured against it in the same run.

fn main() -> std::io::Result<()> {
    omnigate_e2e::bench::serve_baseline(18080, answer)
}

/// Serves one connection: each request's body read, then 200.
async fn answer(stream: tokio::net::TcpStream) {
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
}
