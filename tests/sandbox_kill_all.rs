//! `kill_all_containers` (the Ctrl-C path) stops a running container and leaves nothing behind.
//! Alone in its own test binary: it kills every container of the process.
//! Needs root, runc (or crun) and a static /bin/busybox: run through `scripts/test`.

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use imgbuild::sandbox::{self, RunSpec, Runtime, SandboxError};

#[test]
fn kill_all_containers_stops_a_running_container() {
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
    let worker = std::thread::spawn(move || {
        let mut sent = false;
        sandbox::run(&runtime, &spec, &bundles, &mut |_| {
            if !sent {
                sent = true;
                let _ = started_tx.send(());
            }
        })
        .map(|outcome| (outcome, runtime.clone()))
        .map_err(|e| (e, runtime))
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
    let (outcome, runtime) = result.unwrap_or_else(|(e, _): (SandboxError, Runtime)| panic!("{e}"));
    assert_eq!(outcome.exit_code, 137, "killed by SIGKILL");
    let list = Command::new(&runtime.path)
        .args(["list", "--quiet"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&outcome.container_id));
}
