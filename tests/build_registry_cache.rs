//! The registry build cache end to end through the CLI: a build with `--cache-to` pushes its
//! step records and layers (to `imgbuild serve` and to the CNCF registry); a build in a fresh
//! store with `--cache-from` then runs no step (all CACHED, RUN not executed: same image
//! digest although RUN writes the time), a changed file redoes only the steps after it, an
//! unreachable cache is a warning, and bad flag values are errors naming the flag.

mod common;

use common::build_log::build;
use common::serve::Registry;
use common::*;

/// Two layer steps around two RUNs that write the current time (so a re-run changes the
/// image digest).
fn context_dir() -> tempfile::TempDir {
    let context = temp_dir();
    write_files(
        context.path(),
        &[
            (
                "Dockerfile",
                &format!(
                    "FROM {}\n\
                     COPY a.txt /a.txt\n\
                     RUN date +%s%N > /stamp\n\
                     ENV MODE=test\n\
                     COPY b.txt /b.txt\n\
                     RUN cat /b.txt > /b-copy && date +%s%N > /stamp2\n",
                    base_image()
                ),
            ),
            ("a.txt", "alpha\n"),
            ("b.txt", "bravo\n"),
        ],
    );
    context
}

const STEPS: [&str; 4] = [
    "COPY a.txt",
    "RUN date +%s%N > /stamp",
    "COPY b.txt",
    "RUN cat /b.txt",
];

/// Build with --cache-to `cache`; rebuild in fresh stores with --cache-from `cache`.
fn round_trip(cache: &str) {
    let context = context_dir();
    let first_root = temp_dir();
    let to = format!("type=registry,ref={cache},mode=max");
    let first = build(first_root.path(), context.path(), &["--cache-to", &to]);
    assert!(
        first.log.contains("exported build cache to"),
        "{}",
        first.log
    );
    for step in STEPS {
        assert!(!first.cached_starting(step), "first build of {step} cached");
    }
    // The cache is an OCI artifact: the records in its config, one layer per layer step.
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{cache}"),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        manifest["artifactType"], "application/vnd.imgbuild.cache.v1+json",
        "{raw}"
    );
    assert_eq!(
        manifest["config"]["mediaType"], "application/vnd.imgbuild.cache.config.v1+json",
        "{raw}"
    );
    assert_eq!(
        manifest["layers"].as_array().map(Vec::len),
        Some(4),
        "{raw}"
    );

    let from = format!("type=registry,ref={cache}");
    let fresh_root = temp_dir();
    let second = build(fresh_root.path(), context.path(), &["--cache-from", &from]);
    for step in STEPS {
        assert!(
            second.cached_starting(step),
            "{step} not CACHED:\n{}",
            second.log
        );
    }
    assert!(
        second.log.contains("CACHED (from registry"),
        "{}",
        second.log
    );
    assert_eq!(
        second.digest, first.digest,
        "RUN steps were re-executed (their time stamps changed the image):\n{}",
        second.log
    );

    // A changed b.txt redoes COPY b.txt and the RUN after it, nothing before.
    std::fs::write(context.path().join("b.txt"), "bravo changed\n").unwrap();
    let third_root = temp_dir();
    let third = build(third_root.path(), context.path(), &["--cache-from", &from]);
    assert!(third.cached_starting("COPY a.txt"), "{}", third.log);
    assert!(
        third.cached_starting("RUN date +%s%N > /stamp"),
        "{}",
        third.log
    );
    assert!(!third.cached_starting("COPY b.txt"), "{}", third.log);
    assert!(!third.cached_starting("RUN cat /b.txt"), "{}", third.log);
    assert_ne!(third.digest, first.digest);
}

#[test]
fn cache_round_trips_through_imgbuild_serve() {
    let registry = Registry::start();
    round_trip(&format!("{}/cache/app:buildcache", registry.address));
}

#[test]
fn cache_round_trips_through_the_cncf_registry() {
    let name = unique_name("regcache");
    round_trip(&format!(
        "{}/imgbuild-test/{name}:buildcache",
        peer_registry()
    ));
}

#[test]
fn mode_min_exports_only_the_final_stage_steps() {
    let registry = Registry::start();
    let cache = format!("{}/cache/multi:min", registry.address);
    let context = temp_dir();
    write_files(
        context.path(),
        &[(
            "Dockerfile",
            &format!(
                "FROM {base} AS builder\n\
                 RUN echo built > /built\n\
                 FROM {base}\n\
                 COPY --from=builder /built /built\n\
                 RUN date +%s%N > /final\n",
                base = base_image()
            ),
        )],
    );
    // SOURCE_DATE_EPOCH makes the builder's re-run produce the same layer, so the final
    // stage's keys match again although the builder stage itself was not exported.
    let build_with = |extra: &[&str]| {
        let root = temp_dir();
        let mut args = vec!["build", "--progress", "plain"];
        args.extend_from_slice(extra);
        args.push(context.path().to_str().unwrap());
        let output = imgbuild_env(root.path(), &args, &[("SOURCE_DATE_EPOCH", "1000")]);
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        (ok(output), log)
    };
    let (first, _) = build_with(&["--cache-to", &format!("type=registry,ref={cache}")]);
    let (second, log) = build_with(&["--cache-from", &format!("type=registry,ref={cache}")]);
    let cached_after = |step: &str| {
        let lines: Vec<&str> = log.lines().collect();
        let at = lines
            .iter()
            .position(|line| line.contains(step))
            .unwrap_or_else(|| panic!("no step {step:?} in:\n{log}"));
        lines[at + 1..]
            .iter()
            .take_while(|line| !line.contains("] "))
            .any(|line| line.starts_with('#') && line.ends_with(" CACHED"))
    };
    assert!(
        !cached_after("RUN echo built"),
        "mode=min exported the builder stage:\n{log}"
    );
    assert!(cached_after("RUN date +%s%N > /final"), "{log}");
    assert_eq!(first, second, "{log}");
}

#[test]
fn unreachable_cache_is_a_warning_and_the_build_still_runs() {
    let context = context_dir();
    let root = temp_dir();
    let built = build(
        root.path(),
        context.path(),
        &[
            "--cache-from",
            "type=registry,ref=127.0.0.1:1/nothing/here:cache",
        ],
    );
    assert!(
        built.log.contains("warning: cannot import build cache"),
        "{}",
        built.log
    );
    for step in STEPS {
        assert!(!built.cached_starting(step), "{step} cached from nowhere");
    }
    assert!(built.digest.starts_with("sha256:"), "{}", built.digest);
}

#[test]
fn bad_cache_flag_values_are_errors_naming_flag_and_value() {
    let context = context_dir();
    let root = temp_dir();
    let context_text = context.path().to_str().unwrap();
    let err = fails(imgbuild(
        root.path(),
        &["build", "--cache-to", "type=foo,ref=x", context_text],
    ));
    assert!(
        err.contains("--cache-to") && err.contains("type=foo") && err.contains("unsupported"),
        "{err}"
    );
    let err = fails(imgbuild(
        root.path(),
        &["build", "--cache-from", "type=registry", context_text],
    ));
    assert!(
        err.contains("--cache-from") && err.contains("missing ref"),
        "{err}"
    );
}
