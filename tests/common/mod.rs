//! Shared helpers for the integration tests: running the imgbuild binary, the real Docker
//! engine and skopeo, and reading the environment `scripts/test` sets up.
#![allow(dead_code)]

pub mod build_log;
pub mod serve;
pub mod v2;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A variable set by `scripts/test`; a test that needs it fails (never skips) without it.
pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: run the tests with scripts/test, which starts the real services"
        ),
    }
}

/// The busybox base image on the peer registry (made by scripts/test).
pub fn base_image() -> String {
    required_env("IMGBUILD_TEST_BASE_IMAGE")
}

/// The peer CNCF registry's address (host:port).
pub fn peer_registry() -> String {
    required_env("IMGBUILD_TEST_PEER_REGISTRY")
}

/// Runs the imgbuild binary with a store at `root`.
pub fn imgbuild(root: &Path, args: &[&str]) -> Output {
    imgbuild_env(root, args, &[])
}

/// Runs the imgbuild binary with a store at `root` and extra environment variables.
pub fn imgbuild_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    command
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run imgbuild")
}

/// Asserts success and returns stdout as text.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts failure and returns stderr as text.
pub fn fails(output: Output) -> String {
    assert!(
        !output.status.success(),
        "command should have failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a program and asserts success; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    ok(output)
}

/// Runs the Docker CLI.
pub fn docker(args: &[&str]) -> String {
    run("docker", args)
}

/// A fresh temp directory for a test.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("imgbuild-test-")
        .tempdir()
        .expect("temp dir")
}

/// Writes `files` (relative path, content) under `dir`.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

/// Copies the host's static busybox into `dir/busybox` (for FROM scratch images Docker can run).
pub fn copy_busybox(dir: &Path) -> PathBuf {
    let target = dir.join("busybox");
    std::fs::copy("/bin/busybox", &target)
        .expect("copy /bin/busybox (scripts/test installs busybox-static)");
    target
}

/// A unique lowercase name for images and repositories of one test.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Loads a docker-archive into the Docker engine and returns the loaded image name.
pub fn docker_load(archive: &Path) -> String {
    let out = docker(&["load", "-i", archive.to_str().unwrap()]);
    out.lines()
        .find_map(|l| {
            l.strip_prefix("Loaded image: ")
                .or_else(|| l.strip_prefix("Loaded image ID: "))
        })
        .unwrap_or_else(|| panic!("docker load printed no image: {out}"))
        .trim()
        .to_string()
}

/// Every file under `dir`, relative, sorted: to prove a command changed nothing.
pub fn tree_listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            out.push(format!("{rel} {}", meta.len()));
            if meta.is_dir() {
                walk(base, &path, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
