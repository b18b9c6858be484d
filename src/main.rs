//! The `imgbuild` binary: hands the command line to `imgbuild::cli`.
fn main() -> std::process::ExitCode {
    imgbuild::cli::main()
}
