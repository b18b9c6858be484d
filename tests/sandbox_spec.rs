//! The OCI runtime config made for a RunSpec: namespaces, mounts, capabilities, no limits.

use std::path::Path;

use imgbuild::sandbox::{BindMount, Network, RunSpec, SandboxError, oci_spec_for};

fn config_json(spec: &RunSpec) -> serde_json::Value {
    let config = oci_spec_for(spec, Path::new("/b/hosts"), Path::new("/b/resolv.conf")).unwrap();
    serde_json::to_value(&config).unwrap()
}

fn namespaces(config: &serde_json::Value) -> Vec<String> {
    config["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ns| ns["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn network_none_gets_a_network_namespace_and_host_does_not() {
    let mut spec = RunSpec::new("/rootfs", vec!["true".to_string()]);
    assert_eq!(
        namespaces(&config_json(&spec)),
        ["pid", "mount", "ipc", "uts", "network"]
    );
    spec.network = Network::Host;
    assert_eq!(
        namespaces(&config_json(&spec)),
        ["pid", "mount", "ipc", "uts"]
    );
}

#[test]
fn config_has_mounts_devices_capabilities_and_no_limits() {
    let mut spec = RunSpec::new("/rootfs", vec!["sh".to_string()]);
    spec.mounts.push(BindMount {
        source: "/host/cache".into(),
        destination: "/cache".to_string(),
        readonly: true,
    });
    spec.tmpfs.push("/scratch".to_string());
    let config = config_json(&spec);
    assert_eq!(config["root"]["path"], "/rootfs");
    assert_eq!(config["root"]["readonly"], false);
    assert_eq!(config["process"]["noNewPrivileges"], false);
    assert_eq!(config["process"]["terminal"], false);
    assert!(
        config["process"].get("rlimits").is_none(),
        "rlimits are inherited"
    );

    let mounts = config["mounts"].as_array().unwrap();
    let mount = |destination: &str| {
        mounts
            .iter()
            .find(|m| m["destination"] == destination)
            .unwrap_or_else(|| panic!("no mount at {destination}"))
    };
    assert_eq!(mount("/proc")["type"], "proc");
    assert_eq!(mount("/dev")["type"], "tmpfs");
    assert_eq!(mount("/dev/pts")["type"], "devpts");
    assert_eq!(mount("/dev/shm")["type"], "tmpfs");
    assert!(
        mount("/sys")["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into())
    );
    assert_eq!(mount("/etc/hosts")["source"], "/b/hosts");
    assert_eq!(mount("/etc/resolv.conf")["source"], "/b/resolv.conf");
    assert_eq!(mount("/cache")["source"], "/host/cache");
    assert!(
        mount("/cache")["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into())
    );
    assert_eq!(mount("/scratch")["type"], "tmpfs");

    let devices: Vec<&str> = config["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        devices,
        [
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
            "/dev/tty"
        ]
    );
    let resources = config["linux"]["resources"].as_object().unwrap();
    assert_eq!(
        resources.keys().collect::<Vec<_>>(),
        ["devices"],
        "only device rules, no limits"
    );
    assert!(config["linux"].get("cgroupsPath").is_none());

    let bounding = config["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap();
    assert_eq!(bounding.len(), 14);
    assert!(bounding.contains(&"CAP_CHOWN".into()) && !bounding.contains(&"CAP_SYS_ADMIN".into()));
    assert_eq!(
        config["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap()
            .len(),
        14
    );
}

#[test]
fn a_non_root_user_starts_without_capabilities() {
    let mut spec = RunSpec::new("/rootfs", vec!["id".to_string()]);
    spec.uid = 1000;
    spec.gid = 1000;
    let config = config_json(&spec);
    assert_eq!(config["process"]["user"]["uid"], 1000);
    assert_eq!(
        config["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        config["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .len(),
        14
    );
}

#[test]
fn invalid_specs_are_refused_with_the_reason() {
    let base = RunSpec::new("/rootfs", vec!["true".to_string()]);
    let mut no_command = base.clone();
    no_command.args.clear();
    let mut relative_cwd = base.clone();
    relative_cwd.cwd = "work".to_string();
    let mut escaping_mount = base.clone();
    escaping_mount.tmpfs.push("/tmp/../../etc".to_string());
    for (spec, reason) in [
        (no_command, "no command"),
        (relative_cwd, "not absolute"),
        (escaping_mount, "without `..`"),
    ] {
        match oci_spec_for(&spec, Path::new("/h"), Path::new("/r")) {
            Err(error @ SandboxError::InvalidSpec(_)) => {
                assert!(error.to_string().contains(reason), "{error}")
            }
            other => panic!("expected InvalidSpec({reason}), got {other:?}"),
        }
    }
}

#[test]
fn mount_points_cover_runtime_and_user_mounts() {
    let mut spec = RunSpec::new("/rootfs", vec!["true".to_string()]);
    spec.mounts.push(BindMount {
        source: "/src".into(),
        destination: "/run/secrets/token".to_string(),
        readonly: true,
    });
    spec.tmpfs.push("/var/cache".to_string());
    let points = spec.mount_points();
    for expected in [
        "proc",
        "sys",
        "dev",
        "etc/hosts",
        "etc/resolv.conf",
        "run/secrets/token",
        "var/cache",
    ] {
        assert!(
            points.iter().any(|p| p == expected),
            "{expected} missing from {points:?}"
        );
    }
}
