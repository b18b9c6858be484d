//! Running one container: write the bundle, run `RUNTIME run` with output streamed live, and
//! make sure the container is gone afterwards, also on error, panic or cancellation.
//!
//! The runtime runs in its own process group, so a terminal's Ctrl-C does not reach it (nor,
//! through its signal forwarding, the container's pid 1, which ignores it anyway). Instead the
//! program's Ctrl-C handler calls [`kill_all_containers`] ([`install_ctrl_c_handler`] installs
//! one), or [`Cancel::cancel`] for one run.

use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::SandboxError;
use super::runtime::Runtime;
use super::spec::{Network, RunSpec, oci_spec_for};

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// The command's exit code; 128 + N when it was killed by signal N.
    pub exit_code: i32,
    /// The id the container ran under (for logs; it no longer exists).
    pub container_id: String,
}

/// A container that may be running: the runtime to ask and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveContainer {
    runtime: Runtime,
    id: String,
}

/// Every container started by this process and not yet removed.
static LIVE_CONTAINERS: Mutex<Vec<LiveContainer>> = Mutex::new(Vec::new());
static CONTAINER_COUNTER: AtomicU64 = AtomicU64::new(0);
/// Set by [`kill_all_containers`]: from then on no container starts and runs end as cancelled.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How often and how long a kill is retried while a container is still being created.
const KILL_RETRY_INTERVAL: Duration = Duration::from_millis(50);
const KILL_RETRIES: u32 = 200;

fn live_containers() -> std::sync::MutexGuard<'static, Vec<LiveContainer>> {
    LIVE_CONTAINERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_live(container: &LiveContainer) -> bool {
    live_containers().contains(container)
}

/// Kills and removes every container this process started that is still running (for a
/// Ctrl-C handler). Returns at once; the kills finish in the background while the runs return
/// [`SandboxError::Cancelled`]. From then on this process starts no more containers.
pub fn kill_all_containers() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let containers: Vec<LiveContainer> = live_containers().clone();
    for container in containers {
        kill_in_background(container);
    }
}

/// `RUNTIME delete -f ID`, retried while the container is still registered (it may not exist
/// yet when the kill arrives during its creation).
fn kill_in_background(container: LiveContainer) {
    std::thread::spawn(move || {
        for _ in 0..KILL_RETRIES {
            if !is_live(&container) {
                return;
            }
            force_delete(&container);
            std::thread::sleep(KILL_RETRY_INTERVAL);
        }
    });
}

fn force_delete(container: &LiveContainer) {
    let result = Command::new(&container.runtime.path)
        .args(["delete", "--force", &container.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(error) = result {
        tracing::warn!(
            "running {} delete --force {}: {error}",
            container.runtime.path.display(),
            container.id
        );
    }
}

/// Removes the container when dropped, whatever happened to the run.
struct ContainerGuard {
    container: LiveContainer,
}

impl ContainerGuard {
    fn register(container: LiveContainer) -> ContainerGuard {
        live_containers().push(container.clone());
        ContainerGuard { container }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        // `run` deletes the container itself when it ends normally; only ask again when its
        // state is still there (or where the state lives is unknown).
        let state_left = match self.container.runtime.state_root() {
            Some(root) => root.join(&self.container.id).exists(),
            None => true,
        };
        if state_left {
            force_delete(&self.container);
        }
        live_containers().retain(|c| *c != self.container);
    }
}

/// Stops one run from another thread.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    inner: Arc<CancelState>,
}

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    container: Mutex<Option<LiveContainer>>,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Kills the container of the run using this token (now, or as soon as it starts).
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        let container = self
            .inner
            .container
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(container) = container {
            kill_in_background(container);
        }
    }

    /// Whether this run, or all runs ([`kill_all_containers`]), were cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst) || INTERRUPTED.load(Ordering::SeqCst)
    }

    fn attach(&self, container: Option<LiveContainer>) {
        *self
            .inner
            .container
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = container;
    }
}

/// Runs `spec` with `runtime`, writing the bundle under `work_dir` (removed afterwards) and
/// passing the command's stdout and stderr, interleaved, to `on_output` as they come.
pub fn run(
    runtime: &Runtime,
    spec: &RunSpec,
    work_dir: &Path,
    on_output: &mut dyn FnMut(&[u8]),
) -> Result<RunOutcome, SandboxError> {
    run_cancellable(runtime, spec, work_dir, &Cancel::new(), on_output)
}

/// [`run`], stoppable through `cancel` (then the result is [`SandboxError::Cancelled`]).
pub fn run_cancellable(
    runtime: &Runtime,
    spec: &RunSpec,
    work_dir: &Path,
    cancel: &Cancel,
    on_output: &mut dyn FnMut(&[u8]),
) -> Result<RunOutcome, SandboxError> {
    let id = new_container_id();
    let bundle = tempfile::Builder::new()
        .prefix("bundle-")
        .tempdir_in(work_dir)
        .map_err(|e| SandboxError::io("creating a bundle dir in", work_dir, e))?;
    write_bundle(spec, bundle.path())?;
    let log_file = bundle.path().join("runtime-log.json");

    let (output_reader, output_writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| SandboxError::io("creating a pipe for", work_dir, e))?;
    let stderr_writer = output_writer
        .try_clone()
        .map_err(|e| SandboxError::io("duplicating a pipe for", work_dir, e))?;
    let mut command = Command::new(&runtime.path);
    command
        .arg("--log")
        .arg(&log_file)
        .args(["--log-format", "json", "run", "--bundle"])
        .arg(bundle.path())
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(output_writer))
        .stderr(Stdio::from(stderr_writer))
        .process_group(0);

    let container = LiveContainer {
        runtime: runtime.clone(),
        id: id.clone(),
    };
    let _guard = ContainerGuard::register(container.clone());
    cancel.attach(Some(container));
    let _detach = DetachOnDrop(cancel);
    if cancel.is_cancelled() {
        return Err(SandboxError::Cancelled { id });
    }
    let mut child = command.spawn().map_err(|source| SandboxError::Spawn {
        runtime: runtime.path.clone(),
        source,
    })?;
    // Our copies of the pipe's write end must go, or the read below never sees its end.
    drop(command);

    let mut output = fs::File::from(output_reader);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match output.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => on_output(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("reading the output of container {id}: {e}");
                break;
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| SandboxError::io("waiting for", runtime.path.clone(), e))?;
    if cancel.is_cancelled() {
        return Err(SandboxError::Cancelled { id });
    }
    if let Some(signal) = status.signal() {
        return Err(SandboxError::RuntimeKilled {
            runtime: runtime.name.clone(),
            id,
            signal,
        });
    }
    let exit_code = status.code().unwrap_or(-1);
    if exit_code != 0
        && let Some(message) = runtime_error(&log_file)
    {
        return Err(SandboxError::Runtime {
            runtime: runtime.name.clone(),
            id,
            message,
        });
    }
    Ok(RunOutcome {
        exit_code,
        container_id: id,
    })
}

/// Clears the container of a [`Cancel`] when the run ends.
struct DetachOnDrop<'a>(&'a Cancel);

impl Drop for DetachOnDrop<'_> {
    fn drop(&mut self) {
        self.0.attach(None);
    }
}

/// `imgbuild-<pid>-<counter>-<random>`: unique across processes and runs.
fn new_container_id() -> String {
    let counter = CONTAINER_COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = getrandom::u32().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    });
    format!("imgbuild-{}-{counter}-{random:08x}", std::process::id())
}

/// Writes `config.json`, `hosts` and `resolv.conf` into `bundle`.
fn write_bundle(spec: &RunSpec, bundle: &Path) -> Result<(), SandboxError> {
    let hosts_file = bundle.join("hosts");
    let resolv_file = bundle.join("resolv.conf");
    let mut hosts = String::new();
    if spec.network == Network::Host
        && let Ok(host_hosts) = fs::read_to_string("/etc/hosts")
    {
        hosts.push_str(&host_hosts);
        if !hosts.ends_with('\n') {
            hosts.push('\n');
        }
    } else {
        hosts.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    }
    hosts.push_str(&format!("127.0.1.1\t{}\n", spec.hostname));
    fs::write(&hosts_file, hosts).map_err(|e| SandboxError::io("writing", &hosts_file, e))?;
    let resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
    fs::write(&resolv_file, resolv).map_err(|e| SandboxError::io("writing", &resolv_file, e))?;

    let config = oci_spec_for(spec, &hosts_file, &resolv_file)?;
    let config_file = bundle.join("config.json");
    let json =
        serde_json::to_vec(&config).map_err(|e| SandboxError::io("encoding", &config_file, e))?;
    fs::write(&config_file, json).map_err(|e| SandboxError::io("writing", &config_file, e))?;
    Ok(())
}

/// The runtime's own error messages from its JSON log, if it logged any.
fn runtime_error(log_file: &PathBuf) -> Option<String> {
    let text = fs::read_to_string(log_file).ok()?;
    let messages: Vec<String> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| matches!(entry["level"].as_str(), Some("error" | "fatal" | "panic")))
        .filter_map(|entry| entry["msg"].as_str().map(str::to_string))
        .collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

/// Installs a SIGINT (Ctrl-C) handler for a program that runs containers: the first Ctrl-C
/// while containers run kills them ([`kill_all_containers`]), so the runs return
/// [`SandboxError::Cancelled`] and the program unwinds normally, unmounting its overlays.
/// A Ctrl-C with no container running, or a second one, detaches the remaining overlay mounts
/// and exits with status 130 at once.
pub fn install_ctrl_c_handler() -> Result<(), SandboxError> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SandboxError::io("starting the Ctrl-C handler", "SIGINT", e))?;
    // Registered before returning, so an early Ctrl-C is not lost.
    let mut interrupts = runtime
        .block_on(async { signal(SignalKind::interrupt()) })
        .map_err(|e| SandboxError::io("installing a handler for", "SIGINT", e))?;
    std::thread::Builder::new()
        .name("ctrl-c".to_string())
        .spawn(move || {
            runtime.block_on(async move {
                let mut presses = 0;
                while interrupts.recv().await.is_some() {
                    presses += 1;
                    if presses == 1 && !live_containers().is_empty() {
                        tracing::warn!("interrupted: stopping the running containers (Ctrl-C again to quit now)");
                        kill_all_containers();
                    } else {
                        crate::snapshot::detach_all_mounts();
                        std::process::exit(130);
                    }
                }
            })
        })
        .map_err(|e| SandboxError::io("starting the Ctrl-C handler thread", "SIGINT", e))?;
    Ok(())
}
