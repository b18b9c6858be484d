//! The registry server (`imgbuild serve`): OCI distribution-spec v1.1 over a Storage trait.
//!
//! Layering: `routes` (HTTP shapes) -> `service` (spec rules) -> `storage` (persistence).
//! This module wires them into an axum router with the cross-cutting layers (API version
//! header, metrics, tracing, timeouts, access control) and runs it over plain HTTP or TLS with
//! graceful shutdown, plus the periodic garbage collection when the config asks for it; SIGHUP
//! reloads the TLS certificate and the htpasswd file.

pub mod auth;
pub mod config;
pub mod error;
pub mod gc;
pub mod http;
pub mod manifest;
pub mod metrics;
pub mod name;
pub mod routes;
pub mod service;
pub mod storage;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};

pub use config::RegistryConfig;
use config::StorageBackend;
use metrics::Metrics;
use service::Registry;
use storage::{FilesystemStorage, ObjectStorage, Storage, StorageError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening registry data directory {path}: {source}")]
    Storage {
        path: std::path::PathBuf,
        #[source]
        source: StorageError,
    },
    #[error("opening S3 bucket {bucket}: {source}")]
    ObjectStorage {
        bucket: String,
        #[source]
        source: StorageError,
    },
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

/// Builds the HTTP application over `storage`.
pub fn router(storage: Arc<dyn Storage>, config: &RegistryConfig) -> Router {
    router_with_metrics(storage, config, Arc::new(Metrics::default()))
}

/// Builds the HTTP application over `storage`, counting into `metrics`.
pub fn router_with_metrics(
    storage: Arc<dyn Storage>,
    config: &RegistryConfig,
    metrics: Arc<Metrics>,
) -> Router {
    let state = Arc::new(routes::AppState {
        registry: Registry::new(storage, metrics.clone())
            .with_immutable_tags(config.gc.immutable.clone()),
        request_timeout: config.request_timeout,
    });
    let mut app = Router::new()
        .route("/v2", any(routes::dispatch))
        .route("/v2/", any(routes::dispatch))
        .route("/v2/{*rest}", any(routes::dispatch))
        .route("/healthz", get(health))
        .route("/metrics", get(render_metrics))
        .fallback(|request: Request| async move { routes::not_found(request.uri().path()) })
        .with_state(state);
    if let Some(auth) = &config.auth {
        let token_endpoint = Router::new()
            .route(
                "/token",
                get(auth::endpoint::token).post(auth::endpoint::token),
            )
            .with_state(auth.clone());
        app = app
            .merge(token_endpoint)
            .layer(middleware::from_fn_with_state(
                auth.clone(),
                auth::middleware::require_access,
            ));
    }
    app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        config.body_idle_timeout,
    ))
    .layer(middleware::from_fn(limit_headers))
    .layer(middleware::from_fn_with_state(
        metrics,
        api_version_and_metrics,
    ))
    .layer(
        TraceLayer::new_for_http()
            .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
            .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
    )
}

/// `/healthz`: 200 when the data directory answers.
async fn health(State(state): State<Arc<routes::AppState>>) -> Response {
    match state.registry.storage().upload_count().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("storage: {e}\n")).into_response(),
    }
}

async fn render_metrics(State(state): State<Arc<routes::AppState>>) -> Response {
    let open_uploads = state.registry.storage().upload_count().await.unwrap_or(0);
    let text = state.registry.metrics().render(open_uploads);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Most request headers accepted (hyper's own cap is 100).
const MAX_HEADER_COUNT: usize = 64;
/// Most bytes of request header names and values accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Refuses requests with too many or too large headers with 431.
async fn limit_headers(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADER_COUNT || bytes > MAX_HEADER_BYTES {
        return (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "at most {MAX_HEADER_COUNT} headers and {MAX_HEADER_BYTES} bytes of headers are accepted\n"
            ),
        )
            .into_response();
    }
    next.run(request).await
}

/// Adds `Docker-Distribution-API-Version` to every response and counts it.
async fn api_version_and_metrics(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let route = match path {
        "/metrics" => "metrics",
        "/healthz" => "health",
        "/token" => "token",
        _ => routes::parse_endpoint(path).map_or("other", |e| e.route_name()),
    };
    let method = request.method().as_str().to_string();
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        routes::API_VERSION_HEADER,
        HeaderValue::from_static("registry/2.0"),
    );
    metrics.record_request(route, &method, response.status().as_u16());
    response
}

/// What the periodic collection needs: storage, policy, interval, and where to count.
type PeriodicGc = (
    Arc<dyn Storage>,
    gc::GcPolicy,
    std::time::Duration,
    Arc<Metrics>,
);

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<tls::ReloadableCert>>,
    auth: Option<Arc<auth::Auth>>,
    header_read_timeout: std::time::Duration,
    /// The periodic garbage collection, started by `run` when configured.
    periodic_gc: Option<PeriodicGc>,
}

impl Server {
    /// Opens the storage (the data directory or the bucket), loads the TLS certificate, and
    /// binds the listen address (port 0 picks a free port).
    pub async fn bind(config: &RegistryConfig) -> Result<Server, ServeError> {
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(tls::ReloadableCert::load(
                &files.cert,
                &files.key,
            )?)),
            None => None,
        };
        let storage: Arc<dyn Storage> = match &config.storage {
            StorageBackend::Filesystem => {
                Arc::new(FilesystemStorage::open(&config.data).map_err(|source| {
                    ServeError::Storage {
                        path: config.data.clone(),
                        source,
                    }
                })?)
            }
            StorageBackend::S3(settings) => {
                Arc::new(ObjectStorage::s3(settings).map_err(|source| {
                    ServeError::ObjectStorage {
                        bucket: settings.bucket.clone(),
                        source,
                    }
                })?)
            }
        };
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.addr,
                source,
            })?;
        let metrics = Arc::new(Metrics::default());
        let periodic_gc = config.gc_interval.map(|interval| {
            (
                storage.clone(),
                config.gc.clone(),
                interval,
                metrics.clone(),
            )
        });
        Ok(Server {
            listener,
            app: router_with_metrics(storage, config, metrics),
            tls,
            auth: config.auth.clone(),
            header_read_timeout: config.header_read_timeout,
            periodic_gc,
        })
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        self.listener.local_addr().map_err(ServeError::Serve)
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let reloader = spawn_reload_on_hangup(self.tls.clone(), self.auth.clone());
        let gc_task = self
            .periodic_gc
            .map(|(storage, policy, interval, metrics)| {
                gc::spawn_periodic(storage, policy, interval, metrics)
            });
        let result = match self.tls {
            Some(cert) => {
                let config = tls::server_config(cert)?;
                let listener =
                    tls::TlsListener::new(self.listener, config).map_err(ServeError::Serve)?;
                http::serve(listener, self.app, self.header_read_timeout, shutdown).await;
                Ok(())
            }
            None => serve_plain(self.listener, self.app, self.header_read_timeout, shutdown).await,
        };
        for task in [reloader, gc_task].into_iter().flatten() {
            task.abort();
        }
        result
    }
}

/// Serves plain HTTP on `listener`.
async fn serve_plain(
    listener: TcpListener,
    app: Router,
    header_read_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    {
        // Responses go out as header and body writes: without TCP_NODELAY, Nagle's algorithm
        // and delayed ACKs would hold small streamed bodies back.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        http::serve(listener, app, header_read_timeout, shutdown).await;
        Ok(())
    }
}

/// On SIGHUP, reloads the TLS certificate and the htpasswd file (each keeps its old contents
/// when the new files are bad). The handler is installed before this returns, also when there
/// is nothing to reload, so that a reload never kills the server.
fn spawn_reload_on_hangup(
    cert: Option<Arc<tls::ReloadableCert>>,
    auth: Option<Arc<auth::Auth>>,
) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates will not reload");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if cert.is_none() && auth.is_none() {
                tracing::info!("SIGHUP: no TLS certificate or htpasswd file to reload");
            }
            if let Some(cert) = &cert {
                match cert.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: keeping the old certificate"),
                }
            }
            if let Some(auth) = &auth
                && let Err(e) = auth.reload()
            {
                tracing::error!(error = %e, "SIGHUP: keeping the old htpasswd users");
            }
        }
    }))
}

/// A server running on a background task (for tests and embedding).
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// Stops accepting, waits for in-flight requests, and returns how serving ended.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.shutdown.send(());
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ServeError::Serve(std::io::Error::other(e))),
        }
    }
}

/// Binds and starts a server on the current tokio runtime.
pub async fn spawn(config: &RegistryConfig) -> Result<RunningServer, ServeError> {
    let server = Server::bind(config).await?;
    let addr = server.local_addr()?;
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Ok(RunningServer {
        addr,
        shutdown,
        task,
    })
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
