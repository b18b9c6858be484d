//! Command-line interface: argument parsing (clap derive), progress output, exit codes.
//! No logic of its own: each subcommand calls into the library.
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A daemonless container image builder and OCI registry.
#[derive(Debug, Parser)]
#[command(name = "imgbuild", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) | Command::Registry(RegistryCommand::Serve(args)) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
