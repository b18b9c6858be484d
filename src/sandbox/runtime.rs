//! Choosing the OCI runtime: try crun then runc (or the one asked for) once by running a
//! trivial container, and remember the one that worked in `runtime.json` of the state dir.
//!
//! Probing costs a container start or two (~0.3 s), so as root the result is also remembered
//! host-wide for the current boot in `/run/imgbuild/runtime.json` (`/run` is a tmpfs emptied
//! at boot): a new store on the same host skips the probe. What decides whether a runtime works
//! (kernel, cgroup setup) does not change without a reboot; the executable's size and mtime are
//! recorded too, so an upgraded runtime is probed again.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::SandboxError;
use super::run::run;
use super::spec::{BindMount, RunSpec};

/// An OCI runtime executable known to work on this machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Runtime {
    pub path: PathBuf,
    /// `runc`, `crun`, ... (the executable's file name).
    pub name: String,
}

const REMEMBERED_FILE: &str = "runtime.json";
/// The per-boot, host-wide memo (root only).
const HOST_MEMO_FILE: &str = "/run/imgbuild/runtime.json";

/// A runtime that worked on this host in this boot, and which executable it was.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct HostMemo {
    runtime: Runtime,
    executable: ExecutableId,
}

/// Identifies one version of an executable file: a changed size or mtime means re-probe.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ExecutableId {
    size: u64,
    mtime_nanos: i128,
}

impl ExecutableId {
    fn of(path: &Path) -> Option<ExecutableId> {
        let meta = fs::metadata(path).ok()?;
        let mtime = meta.modified().ok()?;
        let mtime_nanos = match mtime.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => after.as_nanos() as i128,
            Err(before) => -(before.duration().as_nanos() as i128),
        };
        Some(ExecutableId {
            size: meta.len(),
            mtime_nanos,
        })
    }
}

/// The host-wide memo file, when this process may use it (root, `/run` present).
fn host_memo_file() -> Option<&'static Path> {
    let is_root = rustix::process::geteuid().is_root();
    (is_root && Path::new("/run").is_dir()).then(|| Path::new(HOST_MEMO_FILE))
}

/// The runtime in the host memo `file`, if it is `candidate` and unchanged since it worked.
fn host_memo_lookup(file: &Path, candidate: &Path) -> Option<Runtime> {
    let text = fs::read_to_string(file).ok()?;
    let memo: HostMemo = serde_json::from_str(&text).ok()?;
    let unchanged = memo.runtime.path == candidate
        && ExecutableId::of(candidate).is_some_and(|id| id == memo.executable);
    unchanged.then_some(memo.runtime)
}

/// Records that `runtime` works in the host memo `file`. Best effort: without the memo the next
/// new store just probes again.
fn host_memo_record(file: &Path, runtime: &Runtime) {
    let Some(executable) = ExecutableId::of(&runtime.path) else {
        return;
    };
    let memo = HostMemo {
        runtime: runtime.clone(),
        executable,
    };
    let written = serde_json::to_vec_pretty(&memo)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            if let Some(dir) = file.parent() {
                fs::create_dir_all(dir)?;
            }
            crate::fsutil::write_file_atomic(file, &json, None)
        });
    if let Err(e) = written {
        tracing::debug!("cannot remember the OCI runtime in {}: {e}", file.display());
    }
}
const CANDIDATES: [&str; 2] = ["crun", "runc"];
/// Host dirs bound read-only into the probe container so it can run the host's `true`.
const PROBE_HOST_DIRS: [&str; 6] = ["/bin", "/sbin", "/usr", "/lib", "/lib64", "/lib32"];

impl Runtime {
    /// A runtime at `path`, not checked.
    pub fn at(path: &Path) -> Runtime {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Runtime {
            path: path.to_path_buf(),
            name,
        }
    }

    /// The runtime remembered in `state_dir`, or the first of `preferred` (alone) or crun and
    /// runc that runs a trivial container, which is then remembered.
    pub fn detect(state_dir: &Path, preferred: Option<&Path>) -> Result<Runtime, SandboxError> {
        Self::detect_with_host_memo(state_dir, preferred, host_memo_file())
    }

    /// `detect`, consulting (and updating) the host-wide memo `host_memo` when given.
    fn detect_with_host_memo(
        state_dir: &Path,
        preferred: Option<&Path>,
        host_memo: Option<&Path>,
    ) -> Result<Runtime, SandboxError> {
        let remembered_file = state_dir.join(REMEMBERED_FILE);
        if let Ok(text) = fs::read_to_string(&remembered_file)
            && let Ok(remembered) = serde_json::from_str::<Runtime>(&text)
        {
            let wanted = preferred.is_none_or(|p| {
                p == remembered.path
                    || find_on_path_str(p).as_deref() == Some(remembered.path.as_path())
            });
            if wanted && remembered.path.is_file() {
                return Ok(remembered);
            }
        }
        let candidates: Vec<PathBuf> = match preferred {
            Some(path) => vec![find_on_path_str(path).unwrap_or_else(|| path.to_path_buf())],
            None => CANDIDATES
                .iter()
                .filter_map(|name| find_on_path(name))
                .collect(),
        };
        // A candidate that worked earlier in this boot wins without probing the ones before it
        // (they failed then, or the memo would name them).
        let memo_hit = host_memo.and_then(|memo| {
            candidates
                .iter()
                .find_map(|candidate| host_memo_lookup(memo, candidate))
        });
        if let Some(runtime) = memo_hit {
            fs::create_dir_all(state_dir)
                .map_err(|e| SandboxError::io("creating", state_dir, e))?;
            remember(&runtime, &remembered_file)?;
            return Ok(runtime);
        }
        let mut failures = Vec::new();
        for candidate in candidates {
            let runtime = Runtime::at(&candidate);
            match probe(&runtime, state_dir) {
                Ok(()) => {
                    remember(&runtime, &remembered_file)?;
                    if let Some(memo) = host_memo {
                        host_memo_record(memo, &runtime);
                    }
                    tracing::info!("using OCI runtime {}", runtime.path.display());
                    return Ok(runtime);
                }
                Err(reason) => {
                    tracing::info!(
                        "OCI runtime {} does not work here: {reason}",
                        runtime.path.display()
                    );
                    failures.push(format!("{}: {reason}", runtime.path.display()));
                }
            }
        }
        if failures.is_empty() {
            failures.push(match preferred {
                Some(path) => format!("{} not found", path.display()),
                None => "neither crun nor runc is on PATH".to_string(),
            });
        }
        Err(SandboxError::NoRuntime {
            tried: failures.join("; "),
        })
    }

    /// Where this runtime keeps container state by default, when known.
    pub(crate) fn state_root(&self) -> Option<PathBuf> {
        match self.name.as_str() {
            "runc" => Some(PathBuf::from("/run/runc")),
            "crun" => Some(PathBuf::from("/run/crun")),
            _ => None,
        }
    }
}

/// `name` itself when it has a `/`, else the first executable `name` in `PATH`.
fn find_on_path_str(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return Some(name.to_path_buf());
    }
    find_on_path(&name.to_string_lossy())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs the host's `true` in an otherwise empty rootfs with `runtime`.
fn probe(runtime: &Runtime, state_dir: &Path) -> Result<(), String> {
    fs::create_dir_all(state_dir).map_err(|e| format!("creating {}: {e}", state_dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("runtime-probe-")
        .tempdir_in(state_dir)
        .map_err(|e| format!("creating a probe dir in {}: {e}", state_dir.display()))?;
    let rootfs = scratch.path().join("rootfs");
    fs::create_dir(&rootfs).map_err(|e| format!("creating {}: {e}", rootfs.display()))?;
    let mut spec = RunSpec::new(&rootfs, vec!["true".to_string()]);
    spec.mounts = PROBE_HOST_DIRS
        .iter()
        .filter(|dir| Path::new(dir).exists())
        .map(|dir| BindMount {
            source: PathBuf::from(dir),
            destination: dir.to_string(),
            readonly: true,
        })
        .collect();
    let mut output = Vec::new();
    let outcome = run(runtime, &spec, scratch.path(), &mut |bytes| {
        if output.len() < 4096 {
            output.extend_from_slice(bytes);
        }
    });
    match outcome {
        Ok(outcome) if outcome.exit_code == 0 => Ok(()),
        Ok(outcome) => Err(format!(
            "a trivial container exited with {}: {}",
            outcome.exit_code,
            String::from_utf8_lossy(&output).trim()
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// Writes `runtime` to `file` atomically.
fn remember(runtime: &Runtime, file: &Path) -> Result<(), SandboxError> {
    let json =
        serde_json::to_vec_pretty(runtime).map_err(|e| SandboxError::io("encoding", file, e))?;
    crate::fsutil::write_file_atomic(file, &json, None)
        .map_err(|e| SandboxError::io("writing", file, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_memo_names_a_runtime_only_while_its_executable_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let executable = dir.path().join("fake-runc");
        fs::write(&executable, b"#!/bin/sh\n").unwrap();
        let memo = dir.path().join("memo/runtime.json");
        let runtime = Runtime::at(&executable);
        assert_eq!(host_memo_lookup(&memo, &executable), None, "no memo yet");

        host_memo_record(&memo, &runtime);
        assert_eq!(host_memo_lookup(&memo, &executable), Some(runtime.clone()));
        assert_eq!(
            host_memo_lookup(&memo, Path::new("/usr/bin/other")),
            None,
            "another candidate"
        );

        // An upgrade (new size) means the runtime must be probed again.
        fs::write(&executable, b"#!/bin/sh\nexit 0\n").unwrap();
        assert_eq!(host_memo_lookup(&memo, &executable), None);
    }

    #[test]
    fn a_host_memo_hit_skips_probing_and_is_remembered_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        // /bin/false would fail the probe: a hit proves no probe ran.
        let runtime = Runtime::at(Path::new("/bin/false"));
        let memo = dir.path().join("runtime-memo.json");
        host_memo_record(&memo, &runtime);
        let state = dir.path().join("state");
        let detected =
            Runtime::detect_with_host_memo(&state, Some(Path::new("/bin/false")), Some(&memo))
                .unwrap();
        assert_eq!(detected, runtime);
        let stored = fs::read_to_string(state.join(REMEMBERED_FILE)).unwrap();
        assert!(stored.contains("/bin/false"), "{stored}");
    }
}
