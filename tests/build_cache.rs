//! The build cache end to end through the CLI: no-change rebuilds are all CACHED with the
//! same image digest and read no file contents; a changed file or ARG redoes only the steps
//! that depend on it; --no-cache, --no-cache-filter and --explain-cache; prune keeps what
//! tagged images need.

mod common;

use common::build_log::build;
use common::*;
use std::path::Path;

/// Lets just-written files age past the stat cache's racy window, so their hashes are kept.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(300));
}

const SCRATCH_DOCKERFILE: &str = "FROM scratch
COPY a.txt /a.txt
WORKDIR /work
COPY src/ /src/
LABEL stage=test
COPY b.txt /b.txt
";

fn scratch_context(dir: &Path) -> std::path::PathBuf {
    let ctx = dir.join("ctx");
    write_files(
        &ctx,
        &[
            ("Dockerfile", SCRATCH_DOCKERFILE),
            ("a.txt", "a\n"),
            ("b.txt", "b\n"),
            ("src/one.txt", "one\n"),
            ("src/deep/two.txt", "two\n"),
        ],
    );
    settle();
    ctx
}

#[test]
fn no_change_rebuild_is_all_cached_with_the_same_digest() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = scratch_context(dir.path());
    let first = build(&root, &ctx, &[]);
    assert_eq!(first.cached_count(), 0, "{}", first.log);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = build(&root, &ctx, &[]);
    for step in [
        "COPY a.txt /a.txt",
        "WORKDIR /work",
        "COPY src/ /src/",
        "COPY b.txt /b.txt",
    ] {
        assert!(second.cached(step), "{step} not cached:\n{}", second.log);
    }
    // Even without SOURCE_DATE_EPOCH (and a second later) the image is the same.
    assert_eq!(first.digest, second.digest);
}

#[test]
fn no_change_rebuild_reads_no_file_contents() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    let mut files: Vec<(String, String)> = (0..300)
        .map(|i| (format!("tree/d{}/f{i}.txt", i % 10), format!("file {i}\n")))
        .collect();
    files.push((
        "Dockerfile".into(),
        "FROM scratch\nCOPY tree /tree\n".into(),
    ));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    write_files(&ctx, &refs);
    settle();
    let first = build(&root, &ctx, &[]);
    assert!(
        first.log.contains("300 files checked, 300 read"),
        "{}",
        first.log
    );
    let second = build(&root, &ctx, &[]);
    assert!(
        second.log.contains("300 files checked, 0 read (0 bytes)"),
        "a no-change rebuild must not read file contents:\n{}",
        second.log
    );
    assert!(second.cached("COPY tree /tree"));
    // Touching one file (same content) re-reads just that file, and the step still hits.
    std::fs::write(ctx.join("tree/d3/f3.txt"), "file 3\n").unwrap();
    let third = build(&root, &ctx, &[]);
    assert!(
        third.log.contains("300 files checked, 1 read"),
        "{}",
        third.log
    );
    assert!(third.cached("COPY tree /tree"));
    assert_eq!(third.digest, first.digest);
}

#[test]
fn changing_one_file_redoes_only_its_copy_and_later_steps() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = scratch_context(dir.path());
    let first = build(&root, &ctx, &[]);
    std::fs::write(ctx.join("src/deep/two.txt"), "TWO\n").unwrap();
    let second = build(&root, &ctx, &["--explain-cache"]);
    assert!(second.cached("COPY a.txt /a.txt"), "{}", second.log);
    assert!(second.cached("WORKDIR /work"), "{}", second.log);
    assert!(!second.cached("COPY src/ /src/"), "{}", second.log);
    assert!(!second.cached("COPY b.txt /b.txt"), "{}", second.log);
    assert_ne!(first.digest, second.digest);
    // --explain-cache names the file.
    assert!(
        second
            .log
            .contains("cache miss: file src/deep/two.txt changed"),
        "{}",
        second.log
    );
    assert!(
        second.log.contains("cache miss: a previous step changed"),
        "{}",
        second.log
    );
    // The changed content is in the image.
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(imgbuild(&root, &["inspect", &second.digest]))).unwrap();
    let layers = inspect["Manifest"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
}

#[test]
fn a_changed_copy_links_its_unchanged_files_from_the_previous_snapshot() {
    use std::os::unix::fs::MetadataExt;
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    write_files(
        &ctx,
        &[
            // WORKDIR after the COPY mounts its file system, so the COPY is unpacked.
            (
                "Dockerfile",
                "FROM scratch\nCOPY src/ /src/\nWORKDIR /src\n",
            ),
            ("src/same.txt", "same\n"),
            ("src/deep/changed.txt", "before\n"),
            ("src/touched.txt", "touched\n"),
        ],
    );
    settle();
    build(&root, &ctx, &[]);
    std::fs::write(ctx.join("src/deep/changed.txt"), "after\n").unwrap();
    // Same content, another mtime: the file in the layer differs, so it is not linked.
    run(
        "touch",
        &[
            "-d",
            "@1500000000",
            ctx.join("src/touched.txt").to_str().unwrap(),
        ],
    );
    settle();
    let second = build(&root, &ctx, &[]);
    assert!(!second.cached("COPY src/ /src/"), "{}", second.log);

    let snapshots: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("snapshots/sha256"))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("fs/src"))
        .filter(|src| src.is_dir())
        .collect();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let is_new = |src: &std::path::PathBuf| {
        std::fs::read_to_string(src.join("deep/changed.txt")).unwrap() == "after\n"
    };
    let new = snapshots
        .iter()
        .find(|src| is_new(src))
        .expect("the new snapshot");
    let old = snapshots
        .iter()
        .find(|src| !is_new(src))
        .expect("the old snapshot");
    let meta = |src: &std::path::PathBuf, name: &str| std::fs::metadata(src.join(name)).unwrap();
    assert_eq!(
        meta(new, "same.txt").ino(),
        meta(old, "same.txt").ino(),
        "an unchanged file is linked"
    );
    assert_eq!(meta(new, "same.txt").nlink(), 2);
    assert_ne!(
        meta(new, "deep/changed.txt").ino(),
        meta(old, "deep/changed.txt").ino()
    );
    assert_ne!(
        meta(new, "touched.txt").ino(),
        meta(old, "touched.txt").ino()
    );
    assert_eq!(meta(new, "touched.txt").mtime(), 1_500_000_000);
    assert_eq!(
        std::fs::read_to_string(new.join("touched.txt")).unwrap(),
        "touched\n"
    );
}

#[test]
fn no_cache_rebuilds_every_step_and_still_records() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = scratch_context(dir.path());
    build(&root, &ctx, &[]);
    let uncached = build(&root, &ctx, &["--no-cache", "--explain-cache"]);
    assert_eq!(uncached.cached_count(), 0, "{}", uncached.log);
    assert!(uncached.log.contains("cache miss: the cache is disabled"));
    let again = build(&root, &ctx, &[]);
    assert_eq!(again.cached_count(), 4, "{}", again.log);
    assert_eq!(again.digest, uncached.digest);
}

#[test]
fn no_cache_filter_rebuilds_only_the_named_stage() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    write_files(
        &ctx,
        &[
            (
                "Dockerfile",
                "FROM scratch AS builder\nCOPY a.txt /built.txt\n\
                 FROM scratch\nCOPY b.txt /b.txt\nCOPY --from=builder /built.txt /a.txt\n",
            ),
            ("a.txt", "a\n"),
            ("b.txt", "b\n"),
        ],
    );
    settle();
    let first = build(&root, &ctx, &[]);
    let filtered = build(&root, &ctx, &["--no-cache-filter", "Builder"]);
    assert!(
        !filtered.cached("COPY a.txt /built.txt"),
        "{}",
        filtered.log
    );
    assert!(filtered.cached("COPY b.txt /b.txt"), "{}", filtered.log);
    // The rebuilt stage produced the same layer, so what copies from it still hits.
    assert!(
        filtered.cached("COPY --from=builder /built.txt /a.txt"),
        "{}",
        filtered.log
    );
    assert_eq!(first.digest, filtered.digest);
}

#[test]
fn changing_an_arg_used_by_run_reruns_that_run_only() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    write_files(
        &ctx,
        &[(
            "Dockerfile",
            "ARG BASE\nFROM ${BASE}\nRUN date +%s%N > /first\nARG V=1\nRUN echo $V > /v\n\
             RUN cat /v > /copy\n",
        )],
    );
    let base = format!("BASE={}", base_image());
    let first = build(&root, &ctx, &["--build-arg", &base]);
    assert_eq!(first.cached_count(), 0, "{}", first.log);
    let same = build(&root, &ctx, &["--build-arg", &base]);
    assert_eq!(same.cached_count(), 3, "{}", same.log);
    // `date` in the first RUN: the same digest proves nothing ran again.
    assert_eq!(same.digest, first.digest);
    let changed = build(
        &root,
        &ctx,
        &[
            "--build-arg",
            &base,
            "--build-arg",
            "V=2",
            "--explain-cache",
        ],
    );
    assert!(changed.cached("RUN date +%s%N > /first"), "{}", changed.log);
    assert!(!changed.cached("RUN echo $V > /v"), "{}", changed.log);
    assert!(!changed.cached("RUN cat /v > /copy"), "{}", changed.log);
    assert!(
        changed
            .log
            .contains("cache miss: env:V changed from \"1\" to \"2\""),
        "{}",
        changed.log
    );
}

#[test]
fn prune_removes_cache_only_blobs_and_keeps_tagged_images_intact() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    write_files(
        &ctx,
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY busybox /bin/busybox\nCOPY a.txt /a.txt\n",
            ),
            ("a.txt", "old\n"),
        ],
    );
    copy_busybox(&ctx);
    settle();
    let name = unique_name("imgbuild-prune");
    let tag = format!("{name}:1");
    build(&root, &ctx, &["-t", &tag]);
    // A second build under the same tag leaves the old a.txt layer to the cache alone.
    std::fs::write(ctx.join("a.txt"), "new\n").unwrap();
    build(&root, &ctx, &["-t", &tag]);

    // An image that is then removed leaves a snapshot (its first layer, unpacked for its
    // second COPY) that only the cache knows.
    write_files(
        &ctx,
        &[(
            "Other.Dockerfile",
            "FROM scratch\nCOPY a.txt /x.txt\nCOPY a.txt /y.txt\n",
        )],
    );
    let other = ctx.join("Other.Dockerfile");
    build(
        &root,
        &ctx,
        &["-t", "gone:1", "-f", other.to_str().unwrap()],
    );
    ok(imgbuild(&root, &["rmi", "gone:1"]));
    let snapshots = || root.join("snapshots/sha256").read_dir().unwrap().count();
    assert_eq!(snapshots(), 2, "busybox and gone's first layer");

    // Without --all the records stay, and so does what they need; gone's and the old
    // manifests and configs are needed by nothing.
    let plain = ok(imgbuild(&root, &["prune"]));
    assert!(
        plain.contains("removed 0 cache records, 4 blobs"),
        "{plain}"
    );
    assert_eq!(snapshots(), 2);
    let all = ok(imgbuild(&root, &["prune", "--all"]));
    assert!(!all.contains("removed 0 cache records"), "{all}");
    // The old a.txt layer and gone's two layers.
    assert!(
        all.contains(", 3 blobs ("),
        "cache-only layers must go: {all}"
    );
    assert!(all.contains(", 1 snapshots ("), "{all}");
    assert_eq!(snapshots(), 1, "the tagged image's snapshot stays");
    assert!(all.contains("Total reclaimed space: "), "{all}");
    assert!(!root.join("cache/steps").read_dir().unwrap().any(|_| true));

    // The tagged image still saves, loads and runs.
    let archive = dir.path().join("image.tar");
    ok(imgbuild(
        &root,
        &["save", &tag, "-o", archive.to_str().unwrap()],
    ));
    let loaded = docker_load(&archive);
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &loaded,
        "/bin/busybox",
        "cat",
        "/a.txt",
    ]);
    assert_eq!(out, "new\n");
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &loaded])
        .output();
    // And a rebuild works from nothing.
    let rebuilt = build(&root, &ctx, &["-t", &tag]);
    assert_eq!(rebuilt.cached_count(), 0, "{}", rebuilt.log);
}

/// Serves `body` (changeable) over plain HTTP on 127.0.0.1 for every request.
fn serve_http(body: std::sync::Arc<std::sync::Mutex<String>>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let content = body.lock().unwrap().clone();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{content}",
                content.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    format!("http://{address}")
}

#[test]
fn add_url_is_keyed_by_the_downloaded_content() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    let body = std::sync::Arc::new(std::sync::Mutex::new("version 1\n".to_string()));
    let url = serve_http(body.clone());
    write_files(
        &ctx,
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD {url}/file.txt /file.txt\n"),
        )],
    );
    let step = format!("ADD {url}/file.txt /file.txt");
    let first = build(&root, &ctx, &[]);
    let same = build(&root, &ctx, &[]);
    assert!(same.cached(&step), "{}", same.log);
    assert_eq!(same.digest, first.digest);
    *body.lock().unwrap() = "version 2\n".to_string();
    let changed = build(&root, &ctx, &["--explain-cache"]);
    assert!(!changed.cached(&step), "{}", changed.log);
    assert!(
        changed
            .log
            .contains(&format!("cache miss: url:{url}/file.txt changed")),
        "{}",
        changed.log
    );
    assert_ne!(changed.digest, first.digest);
}

#[test]
fn independent_stages_run_at_the_same_time() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    // Each stage records when its RUN started and ended; concurrent runs overlap.
    let stage = |name: &str| {
        format!(
            "FROM ${{BASE}} AS {name}\n\
             RUN date +%s > /{name} && sleep 3 && date +%s >> /{name}\n"
        )
    };
    let dockerfile = format!(
        "ARG BASE\n{}{}FROM scratch\nCOPY --from=one /one /one\nCOPY --from=two /two /two\n",
        stage("one"),
        stage("two")
    );
    write_files(&ctx, &[("Dockerfile", &dockerfile)]);
    let base = format!("BASE={}", base_image());
    let built = build(&root, &ctx, &["--build-arg", &base]);
    // The log keeps each stage's steps together.
    let names: Vec<&str> = built.steps.iter().map(|(s, _)| s.as_str()).collect();
    let one = names
        .iter()
        .position(|s| s.starts_with("RUN date"))
        .unwrap();
    assert!(names[one - 1].starts_with("FROM"), "{}", built.log);

    let inspect: serde_json::Value =
        serde_json::from_str(&ok(imgbuild(&root, &["inspect", &built.digest]))).unwrap();
    let times = |layer: usize, name: &str| -> (u128, u128) {
        let digest = inspect["Manifest"]["layers"][layer]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        let blob = root.join("blobs/sha256").join(digest);
        let text = run("tar", &["-xzOf", blob.to_str().unwrap(), name]);
        let mut lines = text.lines().map(|l| l.trim().parse::<u128>().unwrap());
        (lines.next().unwrap(), lines.next().unwrap())
    };
    let (start_one, end_one) = times(0, "one");
    let (start_two, end_two) = times(1, "two");
    assert!(
        start_one.max(start_two) < end_one.min(end_two),
        "the two RUNs did not overlap: one {start_one}..{end_one}, two {start_two}..{end_two}"
    );
}
