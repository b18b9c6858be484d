//! `install_ctrl_c_handler`: a SIGINT while a container runs kills it, the run returns
//! `Cancelled`, and the process lives on to clean up. Alone in its own test binary.
//! Needs root, runc (or crun) and a static /bin/busybox: run through `scripts/test`.

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use imgbuild::sandbox::{self, RunSpec, Runtime, SandboxError};

#[test]
fn ctrl_c_kills_the_running_container_and_the_program_unwinds() {
    assert!(
        rustix::process::geteuid().is_root(),
        "needs root: run scripts/test as root"
    );
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: run scripts/test"
    );
    sandbox::install_ctrl_c_handler().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let runtime =
        Runtime::detect(dir.path(), None).unwrap_or_else(|e| panic!("{e}; run scripts/test"));
    let spec = RunSpec::new(
        &rootfs,
        [
            "/bin/busybox",
            "sh",
            "-c",
            "echo started; /bin/busybox sleep 60",
        ]
        .map(String::from)
        .to_vec(),
    );
    let (started_tx, started_rx) = mpsc::channel();
    let bundles = dir.path().to_path_buf();
    let worker_runtime = runtime.clone();
    let worker_spec = spec.clone();
    let worker = std::thread::spawn(move || {
        let mut sent = false;
        sandbox::run(&worker_runtime, &worker_spec, &bundles, &mut |_| {
            if !sent {
                sent = true;
                let _ = started_tx.send(());
            }
        })
    });
    started_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the container never started");
    let began = Instant::now();
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::INT).unwrap();
    let result = worker.join().unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the kill took {:?}",
        began.elapsed()
    );
    let id = match result {
        Err(SandboxError::Cancelled { id }) => id,
        other => panic!("expected Cancelled, got {other:?}"),
    };
    let list = Command::new(&runtime.path)
        .args(["list", "--quiet"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&id));

    // After an interrupt no new container starts.
    let refused = sandbox::run(&runtime, &spec, dir.path(), &mut |_| {});
    assert!(
        matches!(refused, Err(SandboxError::Cancelled { .. })),
        "{refused:?}"
    );
}
