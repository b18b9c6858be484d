//! What a RUN asks for ([`RunSpec`]) and its translation into an OCI runtime `config.json`.
//!
//! The container gets new pid, mount, ipc and uts namespaces (and a network namespace holding
//! only `lo` for [`Network::None`]), `/proc`, a tmpfs `/dev` with the usual device nodes,
//! devpts, shm and mqueue, a read-only `/sys`, bind mounts of host-made `/etc/hosts` and
//! `/etc/resolv.conf`, Docker's default capability set, and no cgroup limits (only device
//! rules allowing its device nodes).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use super::error::SandboxError;

/// Which network the command sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The host's network namespace (`RUN --network=host`).
    Host,
    /// A new network namespace with only the loopback interface.
    #[default]
    None,
}

/// A host path bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    pub readonly: bool,
}

/// One command to run in a root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub rootfs: PathBuf,
    /// The command and its arguments (not run through a shell here).
    pub args: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    pub network: Network,
    pub mounts: Vec<BindMount>,
    /// Destinations of empty tmpfs mounts.
    pub tmpfs: Vec<String>,
}

impl RunSpec {
    /// A spec running `args` as root in `/` of `rootfs`, with no network and a default `PATH`.
    pub fn new(rootfs: impl Into<PathBuf>, args: Vec<String>) -> RunSpec {
        RunSpec {
            rootfs: rootfs.into(),
            args,
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ],
            cwd: "/".to_string(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            hostname: "buildkitsandbox".to_string(),
            network: Network::None,
            mounts: Vec::new(),
            tmpfs: Vec::new(),
        }
    }

    /// Every mount point of this run whose placeholder the runtime may create in the rootfs,
    /// relative to it: pass to `snapshot::diff_upper_ignoring` so none ends up in a layer.
    pub fn mount_points(&self) -> Vec<String> {
        let mut points: Vec<String> = ["/proc", "/sys", "/dev", "/etc/hosts", "/etc/resolv.conf"]
            .iter()
            .map(|p| p.to_string())
            .chain(self.mounts.iter().map(|m| m.destination.clone()))
            .chain(self.tmpfs.iter().cloned())
            .collect();
        for point in &mut points {
            *point = point.trim_start_matches('/').to_string();
        }
        points
    }

    fn validate(&self) -> Result<(), SandboxError> {
        if self.args.is_empty() {
            return Err(SandboxError::InvalidSpec("no command to run".to_string()));
        }
        if !self.cwd.starts_with('/') {
            return Err(SandboxError::InvalidSpec(format!(
                "working directory {:?} is not absolute",
                self.cwd
            )));
        }
        for destination in self
            .mounts
            .iter()
            .map(|m| &m.destination)
            .chain(&self.tmpfs)
        {
            if !destination.starts_with('/') || destination.split('/').any(|c| c == "..") {
                return Err(SandboxError::InvalidSpec(format!(
                    "mount destination {destination:?} must be absolute without `..`"
                )));
            }
        }
        Ok(())
    }
}

/// Docker's default capability set.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The character devices of `/dev`: (path, major, minor).
const DEVICES: [(&str, i64, i64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn mount(
    destination: &str,
    typ: &str,
    source: &str,
    options: &[&str],
) -> Result<Mount, SandboxError> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn bind(source: &Path, destination: &str, readonly: bool) -> Result<Mount, SandboxError> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            if readonly { "ro" } else { "rw" }.to_string(),
        ])
        .build()?)
}

/// The OCI runtime config for `spec`, with `/etc/hosts` and `/etc/resolv.conf` bound from
/// `hosts_file` and `resolv_file`.
pub fn oci_spec_for(
    spec: &RunSpec,
    hosts_file: &Path,
    resolv_file: &Path,
) -> Result<Spec, SandboxError> {
    spec.validate()?;
    let capabilities: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    // Like Docker: a non-root user keeps the bounding set but starts with no capabilities.
    let (effective, permitted) = if spec.uid == 0 {
        (capabilities.clone(), capabilities.clone())
    } else {
        (HashSet::new(), HashSet::new())
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(capabilities)
        .effective(effective)
        .permitted(permitted)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let user = UserBuilder::default()
        .uid(spec.uid)
        .gid(spec.gid)
        .additional_gids(spec.additional_gids.clone())
        .build()?;
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(spec.args.clone())
        .env(spec.env.clone())
        .cwd(&spec.cwd)
        .capabilities(capabilities)
        .no_new_privileges(false)
        .build()?;
    // Inherit resource limits instead of the library's default 1024 open files.
    process.set_rlimits(None);

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        bind(hosts_file, "/etc/hosts", false)?,
        bind(resolv_file, "/etc/resolv.conf", false)?,
    ];
    for user_mount in &spec.mounts {
        mounts.push(bind(
            &user_mount.source,
            &user_mount.destination,
            user_mount.readonly,
        )?);
    }
    for destination in &spec.tmpfs {
        mounts.push(mount(
            destination,
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=1777"],
        )?);
    }

    let mut namespace_types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
    ];
    if spec.network == Network::None {
        namespace_types.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespace_types
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()?;
    let devices = DEVICES
        .iter()
        .map(|(path, major, minor)| {
            LinuxDeviceBuilder::default()
                .path(*path)
                .typ(LinuxDeviceType::C)
                .major(*major)
                .minor(*minor)
                .file_mode(0o666u32)
                .uid(0u32)
                .gid(0u32)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .devices(devices)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .build()?;
    // No cgroup limits: a build step may use the whole machine. Only the device rules are
    // set: without them runc's device cgroup denies even /dev/null.
    let mut device_rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
        // /dev/pts/* and /dev/ptmx.
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(136i64)
            .access("rwm")
            .build()?,
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(5i64)
            .minor(2i64)
            .access("rwm")
            .build()?,
    ];
    device_rules.extend(
        linux
            .devices()
            .iter()
            .flatten()
            .map(LinuxDeviceCgroup::from),
    );
    let resources = LinuxResourcesBuilder::default()
        .devices(device_rules)
        .build()?;
    linux.set_resources(Some(resources));

    let root = RootBuilder::default()
        .path(&spec.rootfs)
        .readonly(false)
        .build()?;
    let spec = SpecBuilder::default()
        .version("1.0.2")
        .root(root)
        .hostname(&spec.hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()?;
    Ok(spec)
}
