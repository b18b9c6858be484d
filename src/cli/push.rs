//! `imgbuild push`, `login` and `logout`: moving images to registries and managing the
//! credentials in Docker's config.json.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context as _, bail};

use super::images::resolve;
use super::transfer::TransferProgress;
use crate::client::{self, ConnectionOptions, ManifestFormat, PushOptions};
use crate::reference::Reference;
use crate::store::Store;

/// Manifest format flag values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// OCI image manifests (the default).
    Oci,
    /// Docker schema2 manifests, for registries or clients that need them.
    Docker,
}

/// Flags shared by every command that talks to a registry.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryFlags {
    /// Verify the registry's TLS certificate.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
    /// Talk plain HTTP to the registry (default: only for localhost and 127.0.0.0/8).
    #[arg(long)]
    pub plain_http: bool,
}

impl RegistryFlags {
    pub fn connection(&self) -> ConnectionOptions {
        ConnectionOptions {
            tls_verify: self.tls_verify,
            plain_http: self.plain_http.then_some(true),
            ..ConnectionOptions::default()
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Local image to push.
    pub image: String,
    /// Where to push it [default: the image's own name].
    pub destination: Option<String>,
    /// Manifest format to push.
    #[arg(long, value_enum, default_value = "oci")]
    pub format: FormatArg,
    /// Print nothing but the pushed digest.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Write the pushed manifest digest to this file.
    #[arg(long)]
    pub digestfile: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryFlags,
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Registry host, e.g. 127.0.0.1:5000.
    pub registry: String,
    #[arg(short = 'u', long)]
    pub username: String,
    /// Password (prefer --password-stdin).
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry_flags: RegistryFlags,
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// Registry host.
    pub registry: String,
}

/// Pushes `local` (a store entry) to `destination`; prints the summary and the digest.
pub fn push_image(
    store: &Store,
    local: &str,
    destination: Option<&str>,
    options: &PushOptions,
    quiet: bool,
) -> anyhow::Result<client::PushReport> {
    let entry = resolve(store, local)?;
    let dest_text = match (destination, &entry.name) {
        (Some(dest), _) => dest.to_string(),
        (None, Some(name)) => name.clone(),
        (None, None) => bail!("{local} has no name to push to; give a destination"),
    };
    let dest = Reference::parse(&dest_text)
        .with_context(|| format!("invalid destination {dest_text:?}"))?
        .with_default_tag();
    let local_ref = match &entry.name {
        Some(name) => Reference::parse(name)?,
        None => {
            let mut reference = dest.clone();
            reference.tag = None;
            reference.digest = Some(entry.manifest_digest.clone());
            reference
        }
    };
    let progress = TransferProgress::new(quiet);
    let runtime = super::runtime()?;
    let report = runtime.block_on(client::push(store, &local_ref, &dest, options, &progress))?;
    if !quiet {
        eprintln!("{report}");
    }
    Ok(report)
}

pub fn push(store: &Store, args: PushArgs) -> anyhow::Result<()> {
    let options = PushOptions {
        format: match args.format {
            FormatArg::Oci => ManifestFormat::Oci,
            FormatArg::Docker => ManifestFormat::Docker,
        },
        connection: args.registry.connection(),
        ..PushOptions::default()
    };
    let report = push_image(
        store,
        &args.image,
        args.destination.as_deref(),
        &options,
        args.quiet,
    )?;
    if let Some(path) = &args.digestfile {
        super::build::write_file_atomic(path, report.manifest_digest.to_string().as_bytes())
            .with_context(|| format!("cannot write --digestfile {}", path.display()))?;
    }
    println!("{}", report.manifest_digest);
    Ok(())
}

pub fn login(args: LoginArgs) -> anyhow::Result<()> {
    let password = match (&args.password, args.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(password), false) => password.clone(),
        (None, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the password from standard input")?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("give the password with --password-stdin (or -p)"),
    };
    let runtime = super::runtime()?;
    runtime.block_on(client::login(
        &args.registry,
        &args.username,
        &password,
        &args.registry_flags.connection(),
    ))?;
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<()> {
    if client::logout(&args.registry, &ConnectionOptions::default())? {
        println!("Removing login credentials for {}", args.registry);
    } else {
        println!("Not logged in to {}", args.registry);
    }
    Ok(())
}
