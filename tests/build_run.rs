//! RUN end to end: commands run in an OCI runtime container over the base image, their file
//! system changes become layers, and Docker runs the result exactly as `docker build`'s.

mod common;

use common::*;
use std::path::Path;

/// Builds a Dockerfile (in `files`) whose first line is `ARG BASE`, with the busybox base,
/// loads it into Docker, and returns the context dir and the image tag.
fn build_loaded(
    root: &Path,
    files: &[(&str, &str)],
    extra: &[&str],
) -> (tempfile::TempDir, String) {
    let dir = temp_dir();
    let context = dir.path().join("ctx");
    write_files(&context, files);
    let name = unique_name("imgbuild-run");
    let tag = format!("{name}:1");
    let archive = dir.path().join("image.tar");
    let output = format!("type=docker,dest={}", archive.display());
    let build_arg = format!("BASE={}", base_image());
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "-t",
        &tag,
        "--output",
        &output,
        "--build-arg",
        &build_arg,
    ];
    args.extend_from_slice(extra);
    let context_text = context.to_str().unwrap().to_string();
    args.push(&context_text);
    ok(imgbuild(root, &args));
    docker_load(&archive);
    (dir, tag)
}

fn run_in(image: &str, script: &str) -> String {
    docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "sh",
        "-c",
        script,
    ])
}

fn remove_image(image: &str) {
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", image])
        .output();
}

const CHANGES_DOCKERFILE: &str = "ARG BASE
FROM ${BASE}
RUN mkdir -p /data/sub && echo one > /data/sub/file && echo keep > /data/keep && mkdir /gone-dir && touch /gone-dir/x
RUN echo changed > /data/keep && rm /data/sub/file && rm -rf /gone-dir && rm /bin/vi
RUN rm -rf /data/sub && mkdir /data/sub && echo fresh > /data/sub/new
RUN echo f > /turns-into-dir && mkdir /turns-into-file
RUN rm /turns-into-dir && mkdir /turns-into-dir && rmdir /turns-into-file && echo now-file > /turns-into-file
RUN true
";

#[test]
fn run_changes_become_layers_docker_sees() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let (_ctx, image) = build_loaded(&root, &[("Dockerfile", CHANGES_DOCKERFILE)], &[]);
    let out = run_in(
        &image,
        "cat /data/keep; ls /data/sub; test -e /gone-dir || echo gone-dir-absent; \
         test -e /bin/vi || echo vi-absent; test -d /turns-into-dir && echo is-dir; cat /turns-into-file",
    );
    assert_eq!(
        out,
        "changed\nnew\ngone-dir-absent\nvi-absent\nis-dir\nnow-file\n"
    );
    let history = docker(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.Size}} {{.CreatedBy}}",
        &image,
    ]);
    let last = history.lines().next().unwrap();
    assert!(
        last.starts_with("0B") && last.contains("RUN /bin/sh -c true"),
        "{history}"
    );
    remove_image(&image);
}

const ENV_DOCKERFILE: &str = "ARG BASE
FROM ${BASE}
ARG STAGE_ARG=from-arg
ENV FROM_ENV=from-env
WORKDIR /work/dir
RUN echo \"$STAGE_ARG $FROM_ENV $(pwd) $(id -u)\" > /record
USER app
RUN [\"sh\", \"-c\", \"echo exec $(id -un) $HOME > /tmp/exec-form\"]
RUN <<EOF
echo heredoc-script $STAGE_ARG > /tmp/heredoc
EOF
RUN cat <<'EOT' > /tmp/quoted
literal $FROM_ENV
EOT
USER root
RUN cat /tmp/exec-form /tmp/heredoc /tmp/quoted >> /record
";

#[test]
fn run_sees_env_args_user_workdir_and_both_command_forms() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let (_ctx, image) = build_loaded(
        &root,
        &[("Dockerfile", ENV_DOCKERFILE)],
        &["--build-arg", "STAGE_ARG=given"],
    );
    let out = run_in(
        &image,
        "cat /record; env | grep -c STAGE_ARG || true; stat -c '%U' /tmp/exec-form",
    );
    assert_eq!(
        out,
        "given from-env /work/dir 0\nexec app /home/app\nheredoc-script given\nliteral $FROM_ENV\n0\napp\n"
    );
    remove_image(&image);
}

const MOUNTS_DOCKERFILE: &str = "ARG BASE
FROM ${BASE} AS other
RUN echo from-other > /other.txt
FROM ${BASE}
RUN --mount=type=cache,target=/cache echo run1 >> /cache/log
RUN --mount=type=cache,target=/cache cat /cache/log > /cache-seen
RUN --mount=type=bind,source=ctx.txt,target=/mnt/ctx.txt cat /mnt/ctx.txt > /bind-seen
RUN --mount=type=bind,from=other,source=/other.txt,target=/mnt/o cat /mnt/o > /from-seen
RUN --mount=type=tmpfs,target=/scratch echo tmp > /scratch/x && cat /scratch/x > /tmpfs-seen
RUN --mount=type=secret,id=token touch /secret-length-$(cat /run/secrets/token | wc -c)
";

#[test]
fn run_mounts_cache_bind_tmpfs_secret_never_reach_the_layer() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let secret = dir.path().join("token.txt");
    std::fs::write(&secret, "s3cret").unwrap();
    let secret_flag = format!("id=token,src={}", secret.display());
    let (_ctx, image) = build_loaded(
        &root,
        &[
            ("Dockerfile", MOUNTS_DOCKERFILE),
            ("ctx.txt", "context-file\n"),
        ],
        &["--secret", &secret_flag],
    );
    let out = run_in(
        &image,
        "cat /cache-seen /bind-seen /from-seen /tmpfs-seen; ls /secret-length-*; \
         test -e /cache/log || echo no-cache-in-image; test -e /mnt/ctx.txt || echo no-bind; \
         test -e /scratch/x || echo no-tmpfs; test -e /run/secrets/token || echo no-secret",
    );
    assert_eq!(
        out,
        "run1\ncontext-file\nfrom-other\ntmp\n/secret-length-6\nno-cache-in-image\nno-bind\nno-tmpfs\nno-secret\n"
    );
    remove_image(&image);
}

#[test]
fn failing_run_reports_and_leaves_no_mount_or_container() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let context = dir.path().join("ctx");
    write_files(
        &context,
        &[(
            "Dockerfile",
            "ARG BASE\nFROM ${BASE}\nRUN echo about-to-fail && echo oops >&2 && exit 3\n",
        )],
    );
    let build_arg = format!("BASE={}", base_image());
    let stderr = fails(imgbuild(
        &root,
        &[
            "build",
            "-t",
            "failing:1",
            "--build-arg",
            &build_arg,
            context.to_str().unwrap(),
        ],
    ));
    assert!(stderr.contains("exit code: 3"), "{stderr}");
    assert!(stderr.contains("oops"), "{stderr}");
    assert!(stderr.contains("Dockerfile:3"), "{stderr}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(root.to_str().unwrap()),
        "mount left behind: {mounts}"
    );
    // `runc list` shows each container's bundle dir; ours live under this test's store root
    // (other tests may have containers running at the same time).
    let containers = run("runc", &["list"]);
    assert!(
        !containers.contains(root.to_str().unwrap()),
        "container left behind: {containers}"
    );
    fails(imgbuild(&root, &["inspect", "failing:1"]));
}

#[test]
fn ctrl_c_during_run_kills_the_container_and_cleans_up() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let context = dir.path().join("ctx");
    write_files(
        &context,
        &[(
            "Dockerfile",
            "ARG BASE\nFROM ${BASE}\nRUN echo started && sleep 60\n",
        )],
    );
    let build_arg = format!("BASE={}", base_image());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("--root")
        .arg(&root)
        .args([
            "build",
            "--progress",
            "plain",
            "-t",
            "interrupted:1",
            "--build-arg",
            &build_arg,
        ])
        .arg(&context)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start imgbuild");
    // Wait until the RUN's output shows the container is running.
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let output_line = line.ends_with(" started") && !line.contains("RUN");
        seen.push(line);
        if output_line {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.ends_with(" started")),
        "the RUN never started: {seen:?}"
    );
    let started_at = std::time::Instant::now();
    run("kill", &["-INT", &child.id().to_string()]);
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        started_at.elapsed() < std::time::Duration::from_secs(30),
        "Ctrl-C did not stop the RUN"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(root.to_str().unwrap()),
        "mount left behind: {mounts}"
    );
    let containers = run("runc", &["list"]);
    assert!(
        !containers.contains(root.to_str().unwrap()),
        "container left behind: {containers}"
    );
    fails(imgbuild(&root, &["inspect", "interrupted:1"]));
}

#[test]
fn fifty_layer_image_builds_and_runs() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let mut dockerfile = String::from("ARG BASE\nFROM ${BASE}\n");
    for i in 0..50 {
        dockerfile.push_str(&format!("RUN echo {i} > /layer-{i}\n"));
    }
    let (_ctx, image) = build_loaded(&root, &[("Dockerfile", &dockerfile)], &[]);
    assert_eq!(
        run_in(&image, "cat /layer-0 /layer-49; ls / | grep -c layer-"),
        "0\n49\n50\n"
    );
    remove_image(&image);
}

const COMPARE_DOCKERFILE: &str = "ARG BASE
FROM ${BASE}
RUN mkdir -p /srv/app && echo hi > /srv/app/a && chmod 640 /srv/app/a && chown 1000:50 /srv/app/a && ln -s a /srv/app/link && rm -f /bin/ping
ENV X=1
CMD [\"sh\", \"-c\", \"echo $X\"]
";

#[test]
fn run_results_match_docker_build() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let (ctx, ours) = build_loaded(&root, &[("Dockerfile", COMPARE_DOCKERFILE)], &[]);
    let reference = format!("{}-bk:1", unique_name("imgbuild-run"));
    let build_arg = format!("BASE={}", base_image());
    let output = std::process::Command::new("/usr/bin/docker")
        .args([
            "build",
            "--network",
            "host",
            "-q",
            "-t",
            &reference,
            "--build-arg",
            &build_arg,
        ])
        .arg(ctx.path().join("ctx"))
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .unwrap();
    ok(output);
    let probe = "stat -c '%n %a %u %g %F' /srv/app /srv/app/a /srv/app/link; test -e /bin/ping || echo no-ping";
    assert_eq!(run_in(&ours, probe), run_in(&reference, probe));
    let config = |image: &str| {
        docker(&[
            "inspect",
            "--format",
            "{{json .Config.Env}} {{json .Config.Cmd}}",
            image,
        ])
    };
    assert_eq!(config(&ours), config(&reference));
    remove_image(&ours);
    remove_image(&reference);
}
