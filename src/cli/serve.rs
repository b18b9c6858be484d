//! `imgbuild serve` / `imgbuild registry serve`: turns flags and the TOML config file into a
//! registry configuration (flags override the file), sets up logging, and runs the server
//! until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use crate::registry::auth::Auth;
use crate::registry::config::{self, ConfigFile, RegistryConfig};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `imgbuild serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long)]
    pub addr: Option<String>,
    /// Data directory [default: /var/lib/imgbuild/registry].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// TOML config file (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log line format on stderr [default: text]. RUST_LOG sets the level (default info).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Merges the config file and the flags into a registry configuration and a log format.
fn resolve(args: &ServeArgs) -> anyhow::Result<(RegistryConfig, LogFormat)> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let file_origin = args
        .config
        .as_ref()
        .map(|p| format!("config file {}", p.display()))
        .unwrap_or_default();
    let addr = match (&args.addr, &file.addr) {
        (Some(flag), _) => config::parse_addr(flag, "--addr")?,
        (None, Some(value)) => config::parse_addr(value, &file_origin)?,
        (None, None) => config::parse_addr(config::DEFAULT_ADDR, "default")?,
    };
    let data = args
        .data
        .clone()
        .or(file.data.clone())
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA));
    let log_format = match (args.log_format, file.log_format.as_deref()) {
        (Some(flag), _) => flag,
        (None, Some("json")) => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let (gc_interval, gc_policy) = file.gc_settings(&file_origin)?;
    let mut config = RegistryConfig::new(addr, data);
    config.storage = file.storage_backend(&file_origin)?;
    config.auth = Auth::load(&file.auth, file.tls.is_some())?.map(Arc::new);
    config.tls = file.tls;
    config.gc_interval = gc_interval;
    config.gc = gc_policy;
    Ok((config, log_format))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, log_format) = resolve(&args)?;
    init_logging(log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = crate::registry::Server::bind(&config).await?;
        let addr = server.local_addr()?;
        tracing::info!(%addr, data = %config.data.display(), "registry listening");
        if let Some(interval) = config.gc_interval {
            tracing::info!(
                interval = %humantime::format_duration(interval),
                grace = %humantime::format_duration(config.gc.grace),
                "garbage collection scheduled"
            );
        }
        server.run(crate::registry::shutdown_signal()).await?;
        tracing::info!("registry stopped");
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(
            &path,
            "addr = \"127.0.0.1:6000\"\ndata = \"/from/file\"\nlog_format = \"json\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            addr: Some("127.0.0.1:7000".into()),
            data: None,
            config: Some(path),
            log_format: None,
        };
        let (config, format) = resolve(&args).unwrap();
        assert_eq!(config.addr.to_string(), "127.0.0.1:7000");
        assert_eq!(config.data, PathBuf::from("/from/file"));
        assert_eq!(format, LogFormat::Json);
    }
}
