//! What imgbuild adds to a container start: N iterations of (overlay mount + `sandbox::run` of
//! `true` + diff of the upper dir + unmount) against a bare `runc run` of a prepared bundle of
//! the same rootfs. Prints both medians and the difference. Needs root, runc and /bin/busybox.
//!
//! `cargo bench --bench run_overhead` (ITERATIONS=N to change the count).

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imgbuild::sandbox::{self, RunSpec, Runtime, oci_spec_for};
use imgbuild::snapshot::{OverlayMount, diff_upper_ignoring};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let iterations: usize = std::env::var("ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    fs::create_dir_all(lower.join("bin")).unwrap();
    fs::copy("/bin/busybox", lower.join("bin/busybox"))
        .expect("/bin/busybox is missing: run scripts/test");
    std::os::unix::fs::symlink("busybox", lower.join("bin/true")).unwrap();
    for name in ["etc", "proc", "sys", "dev"] {
        fs::create_dir_all(lower.join(name)).unwrap();
    }
    for name in ["etc/hosts", "etc/resolv.conf"] {
        fs::write(lower.join(name), "").unwrap();
    }
    let runtime =
        Runtime::detect(&dir.path().join("state"), None).expect("no OCI runtime: run scripts/test");
    let args = vec!["/bin/true".to_string()];

    // Bare: one bundle written up front, `runc run` only.
    let bundle = dir.path().join("bare-bundle");
    fs::create_dir(&bundle).unwrap();
    for name in ["hosts", "resolv.conf"] {
        fs::write(bundle.join(name), "").unwrap();
    }
    let config = oci_spec_for(
        &RunSpec::new(&lower, args.clone()),
        &bundle.join("hosts"),
        &bundle.join("resolv.conf"),
    )
    .unwrap();
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let mut bare = Vec::new();
    for index in 0..iterations {
        let started = Instant::now();
        let status = Command::new(&runtime.path)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!(
                "imgbuild-bench-bare-{}-{index}",
                std::process::id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        bare.push(started.elapsed());
    }

    // Full: what a RUN step costs through imgbuild.
    let mut full = Vec::new();
    for index in 0..iterations {
        let step = dir.path().join(format!("step-{index}"));
        for name in ["upper", "work", "merged"] {
            fs::create_dir_all(step.join(name)).unwrap();
        }
        let started = Instant::now();
        let mount = OverlayMount::mount(
            std::slice::from_ref(&lower),
            &step.join("upper"),
            &step.join("work"),
            &step.join("merged"),
        )
        .unwrap();
        let spec = RunSpec::new(step.join("merged"), args.clone());
        let outcome = sandbox::run(&runtime, &spec, &step, &mut |_| {}).unwrap();
        assert_eq!(outcome.exit_code, 0);
        mount.unmount().unwrap();
        let entries = diff_upper_ignoring(
            &step.join("upper"),
            std::slice::from_ref(&lower),
            &spec.mount_points(),
        )
        .unwrap();
        full.push(started.elapsed());
        assert!(entries.is_empty(), "{entries:?}");
        fs::remove_dir_all(&step).unwrap();
    }

    let (bare, full) = (median(bare), median(full));
    println!(
        "runtime:                         {}",
        runtime.path.display()
    );
    println!("iterations:                      {iterations}");
    println!(
        "bare `{} run` median:          {:.1} ms",
        runtime.name,
        bare.as_secs_f64() * 1e3
    );
    println!(
        "mount+run+diff+unmount median:   {:.1} ms",
        full.as_secs_f64() * 1e3
    );
    println!(
        "overhead:                        {:.1} ms",
        (full.as_secs_f64() - bare.as_secs_f64()) * 1e3
    );
}
