//! `imgbuild serve` / `imgbuild registry serve`: flags and config file for the registry server.
//! (Owned by the registry work: parse flags/TOML into a registry config and run the server.)

/// Flags of `imgbuild serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long)]
    pub addr: Option<String>,
    /// Data directory.
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// TOML config file (flags override it).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("imgbuild serve is not implemented yet")
}
