//! The HTTP connection loop: accepts connections from any axum `Listener` (plain TCP or TLS)
//! and serves each with hyper (HTTP/1.1, and HTTP/2 when the client offers it), with a
//! header-read timeout so a client that sends its request head slowly cannot hold a
//! connection forever, and a graceful shutdown that lets in-flight requests finish.
//!
//! `axum::serve` does the same minus the header timeout: it gives hyper no timer, and hyper
//! enforces `header_read_timeout` only with one.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

/// Longest time a client may take to send a request's head (request line and headers),
/// counted from when the server starts waiting for it: a keep-alive connection idle for this
/// long is closed too (clients open a new one).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on every connection `listener` accepts until `shutdown` completes, then stops
/// accepting and waits for open connections to finish their requests.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
