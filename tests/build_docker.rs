//! Builds Dockerfiles with imgbuild, loads the results into the real Docker engine and runs
//! them, and compares config and files with what `docker build` (BuildKit) makes of the same
//! Dockerfile and context.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

/// Config fields `docker inspect` shows that a Dockerfile controls.
const CONFIG_FIELDS: &[&str] = &[
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
    "ArgsEscaped",
];

fn inspect_config(image: &str) -> Value {
    let text = docker(&["inspect", "--format", "{{json .Config}}", image]);
    serde_json::from_str(text.trim()).expect("docker inspect JSON")
}

/// Compares the Dockerfile-controlled config fields; null, absent and empty are the same.
fn assert_same_config(ours: &str, reference: &str) {
    let a = inspect_config(ours);
    let b = inspect_config(reference);
    let normalize = |v: Option<&Value>| match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Array(a)) if a.is_empty() => Value::Null,
        Some(Value::Object(o)) if o.is_empty() => Value::Null,
        Some(Value::String(s)) if s.is_empty() => Value::Null,
        Some(Value::Bool(false)) => Value::Null,
        Some(other) => other.clone(),
    };
    for field in CONFIG_FIELDS {
        assert_eq!(
            normalize(a.get(*field)),
            normalize(b.get(*field)),
            "config field {field} differs: imgbuild {ours} vs docker build {reference}"
        );
    }
    for field in ["Author", "Architecture", "Os"] {
        let format = format!("{{{{.{field}}}}}");
        assert_eq!(
            docker(&["inspect", "--format", &format, ours]),
            docker(&["inspect", "--format", &format, reference]),
            "{field} differs"
        );
    }
}

/// Builds `context` with imgbuild, loads it into Docker, and returns the image name.
fn build_and_load(root: &Path, context: &Path, name: &str, extra: &[&str]) -> String {
    let archive = root.join("out.tar");
    let tag = format!("{name}:imgbuild");
    let mut args = vec!["build", "--progress", "plain", "-t", &tag, "--output"];
    let output = format!("type=docker,dest={}", archive.display());
    args.push(&output);
    args.extend_from_slice(extra);
    let context_text = context.to_str().unwrap().to_string();
    args.push(&context_text);
    ok(imgbuild(root, &args));
    let loaded = docker_load(&archive);
    assert!(loaded.contains(name), "loaded {loaded}, expected {name}");
    tag
}

/// Builds `context` with BuildKit (Debian's docker 20.10 client has it built in).
fn buildkit_build(context: &Path, name: &str, extra: &[&str]) -> String {
    let tag = format!("{name}:buildkit");
    let mut args = vec!["build", "--network", "host", "-q", "-t", &tag];
    args.extend_from_slice(extra);
    args.push(context.to_str().unwrap());
    let output = std::process::Command::new("/usr/bin/docker")
        .args(&args)
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .expect("run /usr/bin/docker build");
    ok(output);
    tag
}

fn docker_run(image: &str, command: &[&str]) -> String {
    let mut args = vec!["run", "--rm", "--network", "none", image];
    args.extend_from_slice(command);
    docker(&args)
}

fn remove_images(images: &[&str]) {
    let mut args = vec!["rmi", "-f"];
    args.extend_from_slice(images);
    let _ = std::process::Command::new("docker").args(&args).output();
}

const ALL_CONFIG_DOCKERFILE: &str = r#"FROM scratch
ARG GREETING=hello
COPY busybox /bin/busybox
COPY a.txt /app/
ENV A=1 B="two words" GREETING=${GREETING}
ENV C=$A-x
LABEL x=y "with space"="v w"
MAINTAINER someone@example.com
WORKDIR /work
WORKDIR sub
USER 1000:1000
EXPOSE 80 53/udp 8000-8001
VOLUME /data /cache
STOPSIGNAL SIGKILL
HEALTHCHECK --interval=5s --timeout=2s --retries=2 CMD ["/bin/busybox", "true"]
ONBUILD COPY . /src
SHELL ["/bin/busybox", "sh", "-c"]
ENTRYPOINT ["/bin/busybox"]
CMD ["sh", "-c", "cat /app/a.txt; echo $A $GREETING $C; id -u"]
"#;

#[test]
fn scratch_image_runs_in_docker_and_matches_docker_build() {
    let dir = temp_dir();
    let context = dir.path().join("ctx");
    std::fs::create_dir(&context).unwrap();
    write_files(
        &context,
        &[("Dockerfile", ALL_CONFIG_DOCKERFILE), ("a.txt", "hi\n")],
    );
    copy_busybox(&context);
    let name = unique_name("imgbuild-allconfig");

    let ours = build_and_load(
        dir.path(),
        &context,
        &name,
        &["--build-arg", "GREETING=hey"],
    );
    let out = docker_run(&ours, &[]);
    assert_eq!(out, "hi\n1 hey 1-x\n1000\n");

    let reference = buildkit_build(&context, &name, &["--build-arg", "GREETING=hey"]);
    assert_same_config(&ours, &reference);
    let stat = |image: &str| {
        docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/busybox",
            image,
            "stat",
            "-c",
            "%n %a %u %g %F",
            "/app",
            "/app/a.txt",
            "/work",
            "/work/sub",
            "/bin/busybox",
        ])
    };
    let stat_ours = stat(&ours);
    let stat_reference = stat(&reference);
    assert_eq!(stat_ours, stat_reference);
    remove_images(&[&ours, &reference]);
}

#[test]
fn base_image_from_registry_with_copy_chown_chmod_matches_docker_build() {
    let base = base_image();
    let dir = temp_dir();
    let context = dir.path().join("ctx");
    std::fs::create_dir(&context).unwrap();
    let dockerfile = "ARG BASE\nFROM ${BASE}\nCOPY --chown=app:staff --chmod=750 run.sh /home/app/bin/\n\
                      COPY --chown=1234 data /srv/data\n\
                      COPY --chown=1234 empty /srv/empty-dest/\nCOPY empty /srv/e2\nUSER app\nCMD [\"/home/app/bin/run.sh\"]\n";
    write_files(
        &context,
        &[
            ("Dockerfile", dockerfile),
            ("run.sh", "#!/bin/sh\necho running as $(id -un) in $(pwd)\n"),
            ("data/one.txt", "1"),
            ("data/nested/two.txt", "2"),
        ],
    );
    std::fs::create_dir(context.join("empty")).unwrap();
    let name = unique_name("imgbuild-base");
    let build_arg = format!("BASE={base}");
    let ours = build_and_load(dir.path(), &context, &name, &["--build-arg", &build_arg]);
    assert_eq!(docker_run(&ours, &[]), "running as app in /\n");

    let reference = buildkit_build(&context, &name, &["--build-arg", &build_arg]);
    assert_same_config(&ours, &reference);
    let stat = "stat -c '%n %a %u %g %F' /home/app/bin /home/app/bin/run.sh /srv/data /srv/data/one.txt /srv/data/nested /srv/data/nested/two.txt /srv/empty-dest /srv/e2 /tmp /bin/sh";
    assert_eq!(
        docker_run(&ours, &["sh", "-c", stat]),
        docker_run(&reference, &["sh", "-c", stat])
    );
    remove_images(&[&ours, &reference]);
}

#[test]
fn multi_stage_copy_from_stage_and_image_runs_in_docker() {
    let base = base_image();
    let dir = temp_dir();
    let context = dir.path().join("ctx");
    std::fs::create_dir(&context).unwrap();
    let dockerfile = format!(
        "FROM scratch AS assets\nCOPY a.txt /a.txt\nCOPY b.txt /deep/b.txt\n\
         FROM {base} AS unused\nCOPY does-not-exist /\n\
         FROM scratch AS final\nCOPY --from={base} /bin/busybox /bin/busybox\n\
         COPY --from=assets /a.txt /deep /out/\nCOPY --from=0 /a.txt /copy-of-a\n\
         ENTRYPOINT [\"/bin/busybox\", \"sh\", \"-c\", \"cat /out/a.txt /out/b.txt /copy-of-a\"]\n"
    );
    write_files(
        &context,
        &[
            ("Dockerfile", &dockerfile),
            ("a.txt", "A\n"),
            ("b.txt", "B\n"),
        ],
    );
    let name = unique_name("imgbuild-multistage");
    let ours = build_and_load(dir.path(), &context, &name, &["--target", "final"]);
    assert_eq!(docker_run(&ours, &[]), "A\nB\nA\n");
    remove_images(&[&ours]);
}
