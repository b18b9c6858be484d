//! RUN: runs a command in an OCI runtime container over an overlay of the stage's layers,
//! with the RUN's mounts (cache, bind, tmpfs, secret), and returns the overlay's upper dir
//! as the new layer's entries.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use super::rootfs::{self, Rootfs, RootfsManager};
use super::users;
use crate::digest::Digest;
use crate::dockerfile::{CommandForm, RunInstr};
use crate::layer::Entry;
use crate::sandbox::{self, BindMount, Network, RunSpec, Runtime};
use crate::snapshot::{self, OverlayMount};
use crate::store::Store;

/// How many trailing output lines a failed RUN's error shows.
const FAILURE_TAIL_LINES: usize = 10;

/// What the executor knows that a RUN needs.
pub(crate) struct RunContext<'a> {
    pub store: &'a Store,
    pub runtime: &'a Runtime,
    pub rootfs: &'a RootfsManager,
    pub context_dir: &'a Path,
    /// `--secret id=...,src=...` files by id.
    pub secrets: &'a BTreeMap<String, PathBuf>,
    /// The build's default network (`--network`).
    pub default_network: Network,
}

/// One RUN, fully resolved.
pub(crate) struct RunStep<'a> {
    pub instr: &'a RunInstr,
    /// The stage's layers, bottom first.
    pub layers: &'a [crate::layer::LayerInfo],
    pub shell: Vec<String>,
    /// The environment: image ENV plus the stage's ARGs.
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    /// Resolved `--mount` specs (variables already expanded).
    pub mounts: Vec<MountSpec>,
    /// Root file systems of other stages/images named by `from=` in bind mounts.
    pub from_roots: BTreeMap<String, PathBuf>,
}

/// What a RUN produced: the changed entries (empty when nothing changed), and the upper dir.
pub(crate) struct RunResult {
    pub entries: Vec<Entry>,
    pub upper: tempfile::TempDir,
}

/// A `RUN --mount=...` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MountSpec {
    Cache {
        target: String,
        id: String,
        sharing: Sharing,
        readonly: bool,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    Bind {
        target: String,
        source: String,
        from: Option<String>,
        readwrite: bool,
    },
    Tmpfs {
        target: String,
    },
    Secret {
        id: String,
        target: String,
        required: bool,
    },
}

/// `sharing=` of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sharing {
    Shared,
    Private,
    Locked,
}

impl MountSpec {
    /// Parses one `--mount` value (`type=cache,target=/root/.cache,...`).
    pub fn parse(text: &str) -> Result<MountSpec, String> {
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        for field in text.split(',').filter(|f| !f.is_empty()) {
            let (key, value) = match field.split_once('=') {
                Some((k, v)) => (k.trim().to_lowercase(), v.trim().to_string()),
                None => (field.trim().to_lowercase(), "true".to_string()),
            };
            let key = match key.as_str() {
                "dst" | "destination" => "target".to_string(),
                "src" => "source".to_string(),
                "readonly" => "ro".to_string(),
                "readwrite" => "rw".to_string(),
                _ => key,
            };
            fields.insert(key, value);
        }
        let bad = |why: &str| format!("invalid --mount={text}: {why}");
        let flag = |name: &str| {
            fields
                .get(name)
                .is_some_and(|v| matches!(v.as_str(), "true" | "1" | ""))
        };
        let kind = fields.get("type").map(String::as_str).unwrap_or("bind");
        let target = fields.get("target").cloned();
        let number = |name: &str, default: u32, radix: u32| -> Result<u32, String> {
            match fields.get(name) {
                Some(v) => u32::from_str_radix(v, radix).map_err(|_| bad(&format!("bad {name}"))),
                None => Ok(default),
            }
        };
        let spec = match kind {
            "cache" => {
                let target = target.ok_or_else(|| bad("target is required"))?;
                if fields.contains_key("from") {
                    return Err(bad(
                        "cache mounts seeded from= another stage are not supported",
                    ));
                }
                let sharing = match fields.get("sharing").map(String::as_str) {
                    None | Some("shared") => Sharing::Shared,
                    Some("private") => Sharing::Private,
                    Some("locked") => Sharing::Locked,
                    Some(other) => return Err(bad(&format!("unknown sharing={other}"))),
                };
                MountSpec::Cache {
                    id: fields.get("id").cloned().unwrap_or_else(|| target.clone()),
                    target,
                    sharing,
                    readonly: flag("ro"),
                    uid: number("uid", 0, 10)?,
                    gid: number("gid", 0, 10)?,
                    mode: number("mode", 0o755, 8)?,
                }
            }
            "bind" => MountSpec::Bind {
                target: target.ok_or_else(|| bad("target is required"))?,
                source: fields
                    .get("source")
                    .cloned()
                    .unwrap_or_else(|| ".".to_string()),
                from: fields.get("from").cloned(),
                readwrite: flag("rw"),
            },
            "tmpfs" => MountSpec::Tmpfs {
                target: target.ok_or_else(|| bad("target is required"))?,
            },
            "secret" => {
                let id = match (fields.get("id"), &target) {
                    (Some(id), _) => id.clone(),
                    (None, Some(target)) => {
                        target.rsplit('/').next().unwrap_or_default().to_string()
                    }
                    (None, None) => return Err(bad("secret needs id= or target=")),
                };
                MountSpec::Secret {
                    target: target.unwrap_or_else(|| format!("/run/secrets/{id}")),
                    id,
                    required: flag("required"),
                }
            }
            "ssh" => return Err(bad("ssh mounts are not supported")),
            other => return Err(bad(&format!("unknown mount type {other:?}"))),
        };
        Ok(spec)
    }

    /// The `from=` stage or image of a bind mount.
    pub fn from(&self) -> Option<&str> {
        match self {
            MountSpec::Bind { from, .. } => from.as_deref(),
            _ => None,
        }
    }
}

/// The argv of a RUN: exec form as written; shell form (and heredocs) through the shell,
/// the way BuildKit does it. Returns the argv and an optional script file to mount.
pub(crate) fn command_args(
    instr: &RunInstr,
    shell: &[String],
) -> (Vec<String>, Option<(String, String)>) {
    let line = match &instr.command {
        CommandForm::Exec(args) => return (args.clone(), None),
        CommandForm::Shell(line) => line,
    };
    let with_shell = |script: String| {
        let mut args = shell.to_vec();
        args.push(script);
        args
    };
    if let Some(doc) = instr.sole_heredoc_script() {
        if doc.content.starts_with("#!") {
            let path = format!("/dev/pipes/{}", doc.name);
            return (vec![path], Some((doc.name.clone(), doc.content.clone())));
        }
        return (with_shell(doc.content.clone()), None);
    }
    if instr.heredocs.is_empty() {
        return (with_shell(line.clone()), None);
    }
    let mut full = line.clone();
    for doc in &instr.heredocs {
        full.push('\n');
        full.push_str(&doc.content);
        full.push_str(&doc.name);
    }
    (with_shell(full), None)
}

/// Parses `RUN --network`.
pub(crate) fn parse_network(value: Option<&str>, default: Network) -> Result<Network, String> {
    match value {
        None | Some("default") => Ok(default),
        Some("host") => Ok(Network::Host),
        Some("none") => Ok(Network::None),
        Some(other) => Err(format!(
            "invalid --network={other}: expected default, none or host"
        )),
    }
}

/// Runs one RUN step and returns the changes it made.
pub(crate) fn run_step(
    ctx: &RunContext<'_>,
    step: &RunStep<'_>,
    on_output: &mut dyn FnMut(&[u8]),
) -> Result<RunResult, String> {
    let scratch = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(ctx.store.tmp_dir())
        .map_err(|e| format!("cannot make a scratch dir: {e}"))?;
    let upper = tempfile::Builder::new()
        .prefix("upper-")
        .tempdir_in(ctx.store.tmp_dir())
        .map_err(|e| format!("cannot make an upper dir: {e}"))?;
    let work = scratch.path().join("work");
    let merged = scratch.path().join("merged");
    for dir in [&work, &merged] {
        std::fs::create_dir(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    }
    let lowers = ctx.rootfs.snapshot_dirs(ctx.store, step.layers)?;
    let overlay = OverlayMount::mount(&lowers, upper.path(), &work, &merged)
        .map_err(|e| format!("cannot mount the build file system: {e}"))?;

    let passwd = rootfs::read_in_root(&merged, "etc/passwd").unwrap_or_default();
    let group = rootfs::read_in_root(&merged, "etc/group").unwrap_or_default();
    let user_spec = if step.user.is_empty() {
        "0"
    } else {
        &step.user
    };
    let user = users::resolve_user(user_spec, &passwd, &group).map_err(|e| e.to_string())?;
    rootfs::mkdir_all_in_root(&merged, &step.workdir, user.uid, user.gid)
        .map_err(|e| format!("cannot create working directory {}: {e}", step.workdir))?;

    let (args, script) = command_args(step.instr, &step.shell);
    let mut env = step.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(super::stage::DEFAULT_PATH.to_string());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let mut spec = RunSpec::new(&merged, args);
    spec.env = env;
    spec.cwd = step.workdir.clone();
    spec.uid = user.uid;
    spec.gid = user.gid;
    spec.additional_gids = user.additional_gids.clone();
    spec.network = parse_network(step.instr.network.as_deref(), ctx.default_network)?;

    let mut guards = MountGuards::default();
    if let Some((name, content)) = script {
        let dir = scratch.path().join("pipes");
        std::fs::create_dir(&dir).map_err(|e| format!("cannot write heredoc script: {e}"))?;
        let path = dir.join(&name);
        std::fs::write(&path, content).map_err(|e| format!("cannot write heredoc script: {e}"))?;
        set_mode(&path, 0o755)?;
        spec.mounts.push(BindMount {
            source: path,
            destination: format!("/dev/pipes/{name}"),
            readonly: true,
        });
    }
    for (index, mount) in step.mounts.iter().enumerate() {
        add_mount(
            ctx,
            step,
            mount,
            index,
            scratch.path(),
            &mut spec,
            &mut guards,
        )?;
    }

    if super::interrupted() {
        return Err("build interrupted".to_string());
    }
    let mut tail = OutputTail::default();
    let outcome = sandbox::run(ctx.runtime, &spec, scratch.path(), &mut |bytes: &[u8]| {
        tail.push(bytes);
        on_output(bytes);
    })
    .map_err(|e| e.to_string())?;
    drop(guards);
    overlay
        .unmount()
        .map_err(|e| format!("cannot unmount the build file system: {e}"))?;
    if outcome.exit_code != 0 {
        return Err(format!(
            "process {:?} did not complete successfully: exit code: {}{}",
            spec.args.join(" "),
            outcome.exit_code,
            tail.render()
        ));
    }
    let entries = snapshot::diff_upper_ignoring(upper.path(), &lowers, &spec.mount_points())
        .map_err(|e| format!("cannot read the RUN's changes: {e}"))?;
    Ok(RunResult { entries, upper })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}

/// Mounts and locks that must live until the command ends.
#[derive(Default)]
struct MountGuards {
    overlays: Vec<OverlayMount>,
    locks: Vec<std::fs::File>,
    _rootfs: Vec<Rootfs>,
}

fn add_mount(
    ctx: &RunContext<'_>,
    step: &RunStep<'_>,
    mount: &MountSpec,
    index: usize,
    scratch: &Path,
    spec: &mut RunSpec,
    guards: &mut MountGuards,
) -> Result<(), String> {
    match mount {
        MountSpec::Cache {
            target,
            id,
            sharing,
            readonly,
            uid,
            gid,
            mode,
        } => {
            let key = Digest::sha256_of(id.as_bytes());
            let base = ctx.store.root().join("cache-mounts");
            let dir = base.join(key.hex());
            if !dir.exists() {
                std::fs::create_dir_all(&base)
                    .map_err(|e| format!("cannot create cache mount dir: {e}"))?;
                let staging = tempfile::Builder::new()
                    .prefix("cache-")
                    .tempdir_in(&base)
                    .map_err(|e| format!("cannot create cache mount dir: {e}"))?;
                set_mode(staging.path(), *mode)?;
                rustix::fs::chown(
                    staging.path(),
                    Some(rustix::fs::Uid::from_raw(*uid)),
                    Some(rustix::fs::Gid::from_raw(*gid)),
                )
                .map_err(|e| format!("cannot chown cache mount dir: {e}"))?;
                let staged = staging.keep();
                if std::fs::rename(&staged, &dir).is_err() {
                    let _ = std::fs::remove_dir_all(&staged);
                }
            }
            let source = match sharing {
                Sharing::Shared => dir,
                Sharing::Locked => {
                    let lock = std::fs::File::open(&dir)
                        .map_err(|e| format!("cannot lock cache mount {id}: {e}"))?;
                    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
                        .map_err(|e| format!("cannot lock cache mount {id}: {e}"))?;
                    guards.locks.push(lock);
                    dir
                }
                Sharing::Private => {
                    let lock = std::fs::File::open(&dir)
                        .map_err(|e| format!("cannot open cache mount {id}: {e}"))?;
                    match rustix::fs::flock(
                        &lock,
                        rustix::fs::FlockOperation::NonBlockingLockExclusive,
                    ) {
                        Ok(()) => {
                            guards.locks.push(lock);
                            dir
                        }
                        Err(_) => {
                            let private = scratch.join(format!("cache-private-{index}"));
                            std::fs::create_dir(&private)
                                .map_err(|e| format!("cannot create private cache: {e}"))?;
                            private
                        }
                    }
                }
            };
            spec.mounts.push(BindMount {
                source,
                destination: target.clone(),
                readonly: *readonly,
            });
        }
        MountSpec::Bind {
            target,
            source,
            from,
            readwrite,
        } => {
            let root = match from {
                Some(name) => step
                    .from_roots
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("--mount from={name}: no such stage or image"))?,
                None => ctx.context_dir.to_path_buf(),
            };
            let host_source = rootfs::resolve_in_root(&root, source).ok_or_else(|| {
                format!(
                    "--mount source {source:?} not found in {}",
                    if from.is_some() {
                        "the stage"
                    } else {
                        "the build context"
                    }
                )
            })?;
            let source_path = if *readwrite && host_source.is_dir() {
                let dirs = scratch.join(format!("bind-{index}"));
                let (upper, work, merged) =
                    (dirs.join("upper"), dirs.join("work"), dirs.join("merged"));
                for dir in [&upper, &work, &merged] {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
                }
                let overlay =
                    OverlayMount::mount(std::slice::from_ref(&host_source), &upper, &work, &merged)
                        .map_err(|e| format!("cannot mount {source:?} read-write: {e}"))?;
                guards.overlays.push(overlay);
                merged
            } else {
                host_source
            };
            spec.mounts.push(BindMount {
                source: source_path,
                destination: target.clone(),
                readonly: !*readwrite,
            });
        }
        MountSpec::Tmpfs { target } => spec.tmpfs.push(target.clone()),
        MountSpec::Secret {
            id,
            target,
            required,
        } => match ctx.secrets.get(id) {
            Some(path) => spec.mounts.push(BindMount {
                source: path.clone(),
                destination: target.clone(),
                readonly: true,
            }),
            None if *required => {
                return Err(format!(
                    "secret {id} is required but was not given (--secret id={id},src=FILE)"
                ));
            }
            None => {}
        },
    }
    Ok(())
}

/// The last lines of a command's output, for the error of a failed RUN.
#[derive(Default)]
struct OutputTail {
    lines: VecDeque<String>,
    partial: String,
}

impl OutputTail {
    fn push(&mut self, bytes: &[u8]) {
        self.partial.push_str(&String::from_utf8_lossy(bytes));
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            self.lines.push_back(line.trim_end().to_string());
            if self.lines.len() > FAILURE_TAIL_LINES {
                self.lines.pop_front();
            }
        }
    }

    fn render(&self) -> String {
        let mut lines: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        if !self.partial.is_empty() {
            lines.push(self.partial.trim_end());
        }
        if lines.is_empty() {
            return String::new();
        }
        format!("\nlast output:\n  {}", lines.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::HereDoc;

    fn run_instr(command: CommandForm, heredocs: Vec<HereDoc>) -> RunInstr {
        RunInstr {
            command,
            heredocs,
            mounts: Vec::new(),
            network: None,
            security: None,
        }
    }

    fn doc(name: &str, content: &str) -> HereDoc {
        HereDoc {
            name: name.to_string(),
            content: content.to_string(),
            expand: true,
            strip_tabs: false,
        }
    }

    #[test]
    fn shell_exec_and_heredoc_commands_follow_buildkit() {
        let shell = vec!["/bin/sh".to_string(), "-c".to_string()];
        let exec = run_instr(CommandForm::Exec(vec!["echo".into(), "hi".into()]), vec![]);
        assert_eq!(command_args(&exec, &shell).0, vec!["echo", "hi"]);
        let plain = run_instr(CommandForm::Shell("echo hi".into()), vec![]);
        assert_eq!(
            command_args(&plain, &shell).0,
            vec!["/bin/sh", "-c", "echo hi"]
        );
        let sole = run_instr(
            CommandForm::Shell("<<EOF".into()),
            vec![doc("EOF", "echo a\necho b\n")],
        );
        assert_eq!(
            command_args(&sole, &shell).0,
            vec!["/bin/sh", "-c", "echo a\necho b\n"]
        );
        let script = run_instr(
            CommandForm::Shell("<<EOF".into()),
            vec![doc("EOF", "#!/bin/sh\necho x\n")],
        );
        let (args, file) = command_args(&script, &shell);
        assert_eq!(args, vec!["/dev/pipes/EOF"]);
        assert_eq!(file.unwrap().0, "EOF");
        let complex = run_instr(
            CommandForm::Shell("cat <<EOF > /f".into()),
            vec![doc("EOF", "x\n")],
        );
        assert_eq!(
            command_args(&complex, &shell).0[2],
            "cat <<EOF > /f\nx\nEOF"
        );
    }

    #[test]
    fn mount_specs_parse_like_buildkit() {
        assert_eq!(
            MountSpec::parse("type=cache,target=/root/.cache,sharing=locked").unwrap(),
            MountSpec::Cache {
                target: "/root/.cache".into(),
                id: "/root/.cache".into(),
                sharing: Sharing::Locked,
                readonly: false,
                uid: 0,
                gid: 0,
                mode: 0o755
            }
        );
        assert_eq!(
            MountSpec::parse("type=bind,source=src,target=/src,from=build,rw").unwrap(),
            MountSpec::Bind {
                target: "/src".into(),
                source: "src".into(),
                from: Some("build".into()),
                readwrite: true
            }
        );
        assert_eq!(
            MountSpec::parse("type=secret,id=token").unwrap(),
            MountSpec::Secret {
                id: "token".into(),
                target: "/run/secrets/token".into(),
                required: false
            }
        );
        assert!(MountSpec::parse("type=cache").is_err());
        assert!(MountSpec::parse("type=ssh").is_err());
        assert!(MountSpec::parse("type=nope,target=/x").is_err());
    }

    #[test]
    fn output_tail_keeps_the_last_lines() {
        let mut tail = OutputTail::default();
        for i in 0..20 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        tail.push(b"partial");
        let text = tail.render();
        assert!(text.contains("line 19") && text.contains("partial"));
        assert!(!text.contains("line 9\n"));
    }
}
