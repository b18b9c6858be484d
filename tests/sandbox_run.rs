//! Running commands with the OCI runtime over busybox root file systems and overlay mounts.
//! Needs root, runc (or crun) and a static /bin/busybox: run through `scripts/test`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use imgbuild::layer::EntryKind;
use imgbuild::sandbox::{self, Cancel, Network, RunSpec, Runtime, SandboxError};
use imgbuild::snapshot::{OverlayMount, diff_upper_ignoring};

fn runtime(state: &Path) -> Runtime {
    assert!(
        rustix::process::geteuid().is_root(),
        "running containers needs root: run the tests through scripts/test as root"
    );
    Runtime::detect(state, None)
        .unwrap_or_else(|e| panic!("{e}; run scripts/test, which installs runc"))
}

/// A rootfs with the static busybox, its applets, /etc/passwd and a /data dir.
fn busybox_rootfs(root: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: run scripts/test, which installs busybox-static"
    );
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("data/sub")).unwrap();
    fs::write(root.join("data/old"), "old").unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
}

/// A busybox rootfs as the only lower, with upper/work/merged dirs, all in one temp dir.
struct Sandbox {
    dir: tempfile::TempDir,
    runtime: Runtime,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        for name in ["lower", "upper", "work", "merged", "state", "bundles"] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        busybox_rootfs(&dir.path().join("lower"));
        let runtime = runtime(&dir.path().join("state"));
        Sandbox { dir, runtime }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn lowers(&self) -> Vec<PathBuf> {
        vec![self.path("lower")]
    }
    fn mount(&self) -> OverlayMount {
        OverlayMount::mount(
            &self.lowers(),
            &self.path("upper"),
            &self.path("work"),
            &self.path("merged"),
        )
        .unwrap()
    }
    fn shell(&self, rootfs: &Path, script: &str) -> RunSpec {
        RunSpec::new(
            rootfs,
            vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()],
        )
    }
    /// Runs and collects the output.
    fn run(&self, spec: &RunSpec) -> Result<(sandbox::RunOutcome, String), SandboxError> {
        let mut output = Vec::new();
        let outcome = sandbox::run(&self.runtime, spec, &self.path("bundles"), &mut |bytes| {
            output.extend_from_slice(bytes)
        })?;
        Ok((outcome, String::from_utf8_lossy(&output).into_owned()))
    }
}

fn is_mounted(target: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = target.to_str().unwrap();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(target))
}

/// The container is gone: not in `runc list`, no state dir left.
fn assert_container_gone(runtime: &Runtime, id: &str) {
    let list = Command::new(&runtime.path)
        .args(["list", "--quiet"])
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&list.stdout);
    assert!(
        !ids.lines().any(|line| line == id),
        "{id} is still in `{} list`: {ids}",
        runtime.name
    );
    assert!(
        !Path::new("/run").join(&runtime.name).join(id).exists(),
        "state of {id} is left"
    );
}

#[test]
fn output_streams_live_while_the_command_runs() {
    let sandbox = Sandbox::new();
    let spec = sandbox.shell(
        &sandbox.path("lower"),
        "echo first; sleep 1; echo second >&2",
    );
    let started = Instant::now();
    let mut chunks: Vec<(Duration, String)> = Vec::new();
    let outcome = sandbox::run(
        &sandbox.runtime,
        &spec,
        &sandbox.path("bundles"),
        &mut |bytes| {
            chunks.push((
                started.elapsed(),
                String::from_utf8_lossy(bytes).into_owned(),
            ))
        },
    )
    .unwrap();
    let finished = started.elapsed();
    assert_eq!(outcome.exit_code, 0);
    let first = chunks
        .iter()
        .find(|(_, text)| text.contains("first"))
        .expect("no `first` in the output");
    assert!(
        chunks.iter().any(|(_, text)| text.contains("second")),
        "stderr is missing: {chunks:?}"
    );
    assert!(
        finished - first.0 >= Duration::from_millis(800),
        "`first` arrived at {:?}, only at the end ({finished:?}): not streamed",
        first.0
    );
    assert_container_gone(&sandbox.runtime, &outcome.container_id);
}

#[test]
fn exit_codes_propagate() {
    let sandbox = Sandbox::new();
    for code in [0, 1, 7, 255] {
        let (outcome, _) = sandbox
            .run(&sandbox.shell(&sandbox.path("lower"), &format!("exit {code}")))
            .unwrap();
        assert_eq!(outcome.exit_code, code);
    }
}

#[test]
fn user_groups_cwd_env_and_hostname_are_applied() {
    let sandbox = Sandbox::new();
    let mut spec = sandbox.shell(
        &sandbox.path("lower"),
        "id -u; id -g; id -G; pwd; echo $GREETING; hostname",
    );
    spec.uid = 1000;
    spec.gid = 1000;
    spec.additional_gids = vec![50];
    spec.cwd = "/tmp".to_string();
    spec.env.push("GREETING=hello".to_string());
    spec.hostname = "builder".to_string();
    let (outcome, output) = sandbox.run(&spec).unwrap();
    assert_eq!(outcome.exit_code, 0, "{output}");
    assert_eq!(output, "1000\n1000\n1000 50\n/tmp\nhello\nbuilder\n");
}

#[test]
fn a_missing_command_is_a_runtime_error() {
    let sandbox = Sandbox::new();
    let spec = RunSpec::new(sandbox.path("lower"), vec!["/no/such/command".to_string()]);
    match sandbox.run(&spec) {
        Err(SandboxError::Runtime { message, id, .. }) => {
            assert!(message.contains("/no/such/command"), "{message}");
            assert_container_gone(&sandbox.runtime, &id);
        }
        other => panic!("expected a runtime error, got {other:?}"),
    }
}

#[test]
fn run_on_overlay_then_diff_shows_new_files_whiteouts_opaque_dirs_but_no_mount_points() {
    let sandbox = Sandbox::new();
    let mount = sandbox.mount();
    let spec = sandbox.shell(
        &sandbox.path("merged"),
        "set -e; echo x > /new; rm /bin/ls; mkdir /d; rm -rf /data; mkdir /data; echo z > /data/z; \
         echo '10.0.0.1 extra' >> /etc/hosts; cat /etc/hosts > /hosts-copy; test -c /dev/null; test -d /proc/self",
    );
    let (outcome, output) = sandbox.run(&spec).unwrap();
    assert_eq!(outcome.exit_code, 0, "{output}");
    mount.unmount().unwrap();

    let upper = sandbox.path("upper");
    assert!(
        upper.join("etc/hosts").exists(),
        "the runtime should have made a placeholder for /etc/hosts"
    );
    let entries = diff_upper_ignoring(&upper, &sandbox.lowers(), &spec.mount_points()).unwrap();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let kind_of = |path: &str| -> Vec<&EntryKind> {
        entries
            .iter()
            .filter(|e| e.path == path)
            .map(|e| &e.kind)
            .collect()
    };

    assert!(
        matches!(kind_of("new")[..], [EntryKind::File { size: 2, .. }]),
        "{paths:?}"
    );
    assert_eq!(kind_of("bin/ls"), vec![&EntryKind::Whiteout]);
    assert_eq!(kind_of("d"), vec![&EntryKind::Dir]);
    assert_eq!(
        kind_of("data"),
        vec![&EntryKind::Dir, &EntryKind::OpaqueDir]
    );
    assert!(matches!(
        kind_of("data/z")[..],
        [EntryKind::File { size: 2, .. }]
    ));
    for placeholder in ["etc", "etc/hosts", "etc/resolv.conf", "proc", "sys", "dev"] {
        assert!(
            kind_of(placeholder).is_empty(),
            "{placeholder} must not be in the diff: {paths:?}"
        );
    }
    let hosts_copy = fs::read_to_string(upper.join("hosts-copy")).unwrap();
    assert!(
        hosts_copy.contains("10.0.0.1 extra") && hosts_copy.contains("localhost"),
        "{hosts_copy}"
    );
    assert!(
        sandbox.path("lower/bin/ls").exists(),
        "the lower was changed"
    );
    assert_eq!(
        fs::read_dir(sandbox.path("bundles")).unwrap().count(),
        0,
        "the bundle was left behind"
    );
}

#[test]
fn network_none_has_only_loopback_and_host_sees_the_host() {
    let sandbox = Sandbox::new();
    // /proc/net/dev: two header lines, then one `name: counters` line per interface.
    let interfaces = |text: &str| -> Vec<String> {
        text.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|n| n.trim().to_string())
            .collect()
    };
    let spec = sandbox.shell(&sandbox.path("lower"), "cat /proc/net/dev");
    let (outcome, output) = sandbox.run(&spec).unwrap();
    assert_eq!(outcome.exit_code, 0, "{output}");
    assert_eq!(interfaces(&output), vec!["lo"]);
    // lo is up: the loopback address answers.
    let (outcome, output) = sandbox
        .run(&sandbox.shell(&sandbox.path("lower"), "ping -c 1 -W 2 127.0.0.1"))
        .unwrap();
    assert_eq!(outcome.exit_code, 0, "loopback is down: {output}");

    let mut host_spec = spec.clone();
    host_spec.network = Network::Host;
    let (outcome, output) = sandbox.run(&host_spec).unwrap();
    assert_eq!(outcome.exit_code, 0, "{output}");
    let mut seen = interfaces(&output);
    let mut host = interfaces(&fs::read_to_string("/proc/net/dev").unwrap());
    seen.sort();
    host.sort();
    assert_eq!(seen, host);
}

#[test]
fn a_failing_command_leaves_no_mount_and_no_container() {
    let sandbox = Sandbox::new();
    let mount = sandbox.mount();
    let (outcome, output) = sandbox
        .run(&sandbox.shell(&sandbox.path("merged"), "echo oops; exit 3"))
        .unwrap();
    assert_eq!((outcome.exit_code, output.as_str()), (3, "oops\n"));
    drop(mount);
    assert!(!is_mounted(&sandbox.path("merged")));
    assert_container_gone(&sandbox.runtime, &outcome.container_id);
}

#[test]
fn a_cancelled_run_is_killed_and_leaves_no_mount_and_no_container() {
    let sandbox = Sandbox::new();
    let mount = sandbox.mount();
    let spec = sandbox.shell(
        &sandbox.path("merged"),
        "echo started; sleep 60; echo finished",
    );
    let cancel = Cancel::new();
    let (started_tx, started_rx) = mpsc::channel();
    let began = Instant::now();
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let mut output = Vec::new();
            let result = sandbox::run_cancellable(
                &sandbox.runtime,
                &spec,
                &sandbox.path("bundles"),
                &cancel,
                &mut |bytes| {
                    output.extend_from_slice(bytes);
                    if output.starts_with(b"started") {
                        let _ = started_tx.send(());
                    }
                },
            );
            (result, output)
        });
        started_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the container never started");
        cancel.cancel();
        worker.join().unwrap()
    });
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "the kill took {:?}",
        began.elapsed()
    );
    let (result, output) = result;
    assert!(!String::from_utf8_lossy(&output).contains("finished"));
    let id = match result {
        Err(SandboxError::Cancelled { id }) => id,
        other => panic!("expected Cancelled, got {other:?}"),
    };
    mount.unmount().unwrap();
    assert!(!is_mounted(&sandbox.path("merged")));
    assert_container_gone(&sandbox.runtime, &id);
}

#[test]
fn runtime_detection_is_remembered_and_rejects_runtimes_that_do_not_work() {
    let state = tempfile::tempdir().unwrap();
    let detected = runtime(state.path());
    let remembered = state.path().join("runtime.json");
    let written = fs::metadata(&remembered).unwrap().modified().unwrap();
    assert!(
        fs::read_to_string(&remembered)
            .unwrap()
            .contains(&detected.name)
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(Runtime::detect(state.path(), None).unwrap(), detected);
    assert_eq!(
        fs::metadata(&remembered).unwrap().modified().unwrap(),
        written,
        "detected again"
    );

    let other_state = tempfile::tempdir().unwrap();
    for bogus in ["/bin/false", "/no/such/runtime"] {
        let error = Runtime::detect(other_state.path(), Some(Path::new(bogus))).unwrap_err();
        assert!(
            matches!(error, SandboxError::NoRuntime { .. }) && error.to_string().contains(bogus),
            "{error}"
        );
    }
    assert!(!other_state.path().join("runtime.json").exists());
}
