//! Command-line interface: argument parsing (clap derive), progress output, exit codes.
//! No logic of its own: each subcommand calls into the library.
mod archive;
mod build;
mod gc;
mod images;
mod progress;
mod prune;
mod push;
mod serve;
mod transfer;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::store::Store;

/// A daemonless container image builder and OCI registry.
///
/// `imgbuild [build] [OPTIONS] CONTEXT` builds an image; `build` is the default subcommand.
#[derive(Debug, Parser)]
#[command(name = "imgbuild", version, about)]
pub struct Cli {
    /// Local store directory [default: $IMGBUILD_ROOT, else ~/.local/share/imgbuild].
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (the default subcommand).
    Build(Box<build::BuildArgs>),
    /// List images in the local store.
    Images,
    /// Show an image's manifest and config as JSON.
    Inspect(images::InspectArgs),
    /// Give a local image another name.
    Tag(images::TagArgs),
    /// Remove image names from the local store.
    Rmi(images::RmiArgs),
    /// Write an image to a docker-archive or OCI-archive tar file.
    Save(images::SaveArgs),
    /// Pull an image from a registry into the local store.
    Pull(images::PullArgs),
    /// Push a local image to a registry, sending only the blobs it lacks.
    Push(push::PushArgs),
    /// Save credentials for a registry in Docker's config.json.
    Login(push::LoginArgs),
    /// Remove saved credentials for a registry.
    Logout(push::LogoutArgs),
    /// Remove build cache records and the blobs and snapshots no image or kept record needs.
    Prune(prune::PruneArgs),
    /// Run the bundled OCI registry.
    Serve(serve::ServeArgs),
    /// Registry administration.
    #[command(subcommand)]
    Registry(RegistryCommand),
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Run the bundled OCI registry (same as `imgbuild serve`).
    Serve(serve::ServeArgs),
    /// Remove unreferenced blobs, apply retention rules and expire abandoned uploads
    /// (safe while the registry serves).
    Gc(gc::GcArgs),
}

const SUBCOMMANDS: &[&str] = &[
    "build", "images", "inspect", "tag", "rmi", "save", "pull", "push", "login", "logout", "prune",
    "serve", "registry", "help",
];

/// Inserts `build` when the command line names no subcommand (`imgbuild -f Dockerfile .`).
fn with_default_subcommand(args: Vec<OsString>) -> Vec<OsString> {
    let mut index = 1;
    while index < args.len() {
        let arg = args[index].to_string_lossy();
        if arg == "--root" {
            index += 2;
            continue;
        }
        if arg.starts_with("--root=") {
            index += 1;
            continue;
        }
        if matches!(arg.as_ref(), "-h" | "--help" | "-V" | "--version") {
            return args;
        }
        if SUBCOMMANDS.contains(&arg.as_ref()) {
            return args;
        }
        break;
    }
    let mut out = args;
    if out.len() > 1 {
        out.insert(index.min(out.len()), OsString::from("build"));
    }
    out
}

/// The store root: `--root`, else `$IMGBUILD_ROOT`, else the XDG data dir.
fn store_root(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(root) = flag {
        return Ok(root);
    }
    if let Some(root) = std::env::var_os("IMGBUILD_ROOT").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(root));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(data).join("imgbuild"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("cannot find the store: set --root, IMGBUILD_ROOT or HOME")?;
    Ok(PathBuf::from(home).join(".local/share/imgbuild"))
}

fn open_store(flag: Option<PathBuf>) -> anyhow::Result<Store> {
    let root = store_root(flag)?;
    Store::open(&root).with_context(|| format!("cannot open the store at {}", root.display()))
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let args = with_default_subcommand(std::env::args_os().collect());
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Build(args) => open_store(cli.root).and_then(|store| build::run(&store, *args)),
        Command::Images => open_store(cli.root).and_then(|store| images::list(&store)),
        Command::Inspect(args) => {
            open_store(cli.root).and_then(|store| images::inspect(&store, args))
        }
        Command::Tag(args) => open_store(cli.root).and_then(|store| images::tag(&store, args)),
        Command::Rmi(args) => open_store(cli.root).and_then(|store| images::rmi(&store, args)),
        Command::Save(args) => open_store(cli.root).and_then(|store| images::save(&store, args)),
        Command::Pull(args) => open_store(cli.root).and_then(|store| images::pull(&store, args)),
        Command::Push(args) => open_store(cli.root).and_then(|store| push::push(&store, args)),
        Command::Prune(args) => open_store(cli.root).and_then(|store| prune::run(&store, args)),
        Command::Login(args) => push::login(args),
        Command::Logout(args) => push::logout(args),
        Command::Serve(args) | Command::Registry(RegistryCommand::Serve(args)) => serve::run(args),
        Command::Registry(RegistryCommand::Gc(args)) => gc::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_message(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `outer: inner: root`, leaving out a cause whose text
/// the line already holds (many errors print their source in their own message).
fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// A tokio runtime for the async parts (registry client) of a CLI command.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn build_is_the_default_subcommand() {
        assert_eq!(
            with_default_subcommand(args(&["imgbuild", "-f", "Dockerfile", "."])),
            args(&["imgbuild", "build", "-f", "Dockerfile", "."])
        );
        assert_eq!(
            with_default_subcommand(args(&["imgbuild", "--root", "/r", "."])),
            args(&["imgbuild", "--root", "/r", "build", "."])
        );
        assert_eq!(
            with_default_subcommand(args(&["imgbuild", "images"])),
            args(&["imgbuild", "images"])
        );
        assert_eq!(
            with_default_subcommand(args(&["imgbuild", "--help"])),
            args(&["imgbuild", "--help"])
        );
    }
}
