//! Choosing the OCI runtime: try crun then runc (or the one asked for) once by running a
//! trivial container, and remember the one that worked in `runtime.json` of the state dir.

use std::fs;
use std::io::Write;
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
        let mut failures = Vec::new();
        for candidate in candidates {
            let runtime = Runtime::at(&candidate);
            match probe(&runtime, state_dir) {
                Ok(()) => {
                    remember(&runtime, &remembered_file)?;
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
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| SandboxError::io("creating a temp file in", dir, e))?;
    let json =
        serde_json::to_vec_pretty(runtime).map_err(|e| SandboxError::io("encoding", file, e))?;
    tmp.write_all(&json)
        .map_err(|e| SandboxError::io("writing", tmp.path().to_path_buf(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| SandboxError::io("syncing", tmp.path().to_path_buf(), e))?;
    tmp.persist(file)
        .map_err(|e| SandboxError::io("renaming into", file, e.error))?;
    Ok(())
}
