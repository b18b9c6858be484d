//! `kill_all_containers` (the Ctrl-C path) stops a running container and leaves nothing behind.
//! Alone in its own test binary: it kills every container of the process.
//! Needs root, runc (or crun) and a static /bin/busybox: run through `scripts/test`.

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use imgbuild::sandbox::{self, RunSpec, Runtime, SandboxError};

#[test]
fn kill_all_containers_stops_running_containers_and_refuses_new_ones() {
    assert!(
        rustix::process::geteuid().is_root(),
        "needs root: run scripts/test as root"
    );
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: run scripts/test"
    );
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
    sandbox::kill_all_containers();
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
