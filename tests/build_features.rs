//! Dockerfile features end to end through the CLI: .dockerignore, ADD archives and URLs,
//! heredocs, --parents/--exclude, ONBUILD, reproducible builds, and the image commands.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

fn inspect(root: &Path, image: &str) -> Value {
    serde_json::from_str(&ok(imgbuild(root, &["inspect", image]))).expect("inspect JSON")
}

/// `mode uid/gid path` of every entry of layer `index` of `image`, via GNU tar.
fn layer_listing(root: &Path, image: &str, index: usize) -> Vec<String> {
    let info = inspect(root, image);
    let digest = info["Manifest"]["layers"][index]["digest"]
        .as_str()
        .expect("layer digest")
        .to_string();
    let blob = root
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let listing = run("tar", &["--numeric-owner", "-tvzf", blob.to_str().unwrap()]);
    listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            format!("{} {} {}", fields[0], fields[1], fields[5..].join(" "))
        })
        .collect()
}

fn build(root: &Path, context: &Path, args: &[&str]) -> String {
    let mut full = vec!["build", "-q"];
    full.extend_from_slice(args);
    let context_text = context.to_str().unwrap().to_string();
    full.push(&context_text);
    ok(imgbuild(root, &full)).trim().to_string()
}

#[test]
fn dockerignore_hides_files_and_exceptions_bring_them_back() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    write_files(
        &ctx,
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /app/\n"),
            (
                ".dockerignore",
                "# comment\n*.log\n!keep.log\nbuild/\n**/*.tmp\n",
            ),
            ("main.rs", "fn main() {}"),
            ("debug.log", "x"),
            ("keep.log", "x"),
            ("build/out.o", "x"),
            ("src/deep/a.tmp", "x"),
            ("src/deep/a.rs", "x"),
        ],
    );
    build(&root, &ctx, &["-t", "ignore:1"]);
    let names: Vec<String> = layer_listing(&root, "ignore:1", 0)
        .iter()
        .map(|l| {
            l.rsplit(' ')
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    for present in [
        "app/main.rs",
        "app/keep.log",
        "app/src/deep/a.rs",
        "app/Dockerfile",
    ] {
        assert!(
            names.contains(&present.to_string()),
            "{present} missing: {names:?}"
        );
    }
    for absent in [
        "app/debug.log",
        "app/build/out.o",
        "app/src/deep/a.tmp",
        "app/build",
    ] {
        assert!(
            !names.contains(&absent.to_string()),
            "{absent} present: {names:?}"
        );
    }
}

#[test]
fn add_extracts_local_archives_and_copy_does_not() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    let payload = dir.path().join("payload");
    write_files(&payload, &[("x/one.txt", "1"), ("two.txt", "2")]);
    std::fs::create_dir_all(&ctx).unwrap();
    for (name, flag) in [
        ("a.tar.gz", "-z"),
        ("b.tar.xz", "-J"),
        ("c.tar.bz2", "-j"),
        ("d.tar", ""),
    ] {
        let mut args = vec!["-C", payload.to_str().unwrap(), "-c"];
        if !flag.is_empty() {
            args.push(flag);
        }
        let archive = ctx.join(name);
        args.extend_from_slice(&["-f", archive.to_str().unwrap(), "."]);
        run("tar", &args);
    }
    write_files(
        &ctx,
        &[(
            "Dockerfile",
            "FROM scratch\nADD a.tar.gz /gz\nADD b.tar.xz /xz/\nADD c.tar.bz2 d.tar /multi/\nCOPY a.tar.gz /copied/\n",
        )],
    );
    build(&root, &ctx, &["-t", "add:1"]);
    let all: Vec<String> = (0..4)
        .flat_map(|i| layer_listing(&root, "add:1", i))
        .collect();
    for expected in [
        "gz/x/one.txt",
        "gz/two.txt",
        "xz/two.txt",
        "multi/x/one.txt",
        "copied/a.tar.gz",
    ] {
        assert!(
            all.iter().any(|l| l.ends_with(expected)),
            "{expected} missing: {all:?}"
        );
    }
}

/// Serves `body` over HTTP on 127.0.0.1 for each connection; returns the base URL.
fn serve_http(body: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    format!("http://{address}")
}

#[test]
fn add_downloads_urls_and_verifies_the_checksum() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let base = serve_http(b"downloaded content\n");
    let digest = format!(
        "sha256:{}",
        run(
            "sh",
            &[
                "-c",
                "printf 'downloaded content\\n' | sha256sum | cut -d' ' -f1"
            ]
        )
        .trim()
    );
    let ctx = dir.path().join("ctx");
    let dockerfile = format!(
        "FROM scratch\nADD --checksum={digest} {base}/files/data.txt /srv/\nADD {base}/files/data.txt /renamed.txt\n"
    );
    write_files(&ctx, &[("Dockerfile", &dockerfile)]);
    build(&root, &ctx, &["-t", "url:1"]);
    let first = layer_listing(&root, "url:1", 0);
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("-rw------- 0/0") && l.ends_with("srv/data.txt")),
        "{first:?}"
    );
    let second = layer_listing(&root, "url:1", 1);
    assert!(
        second.iter().any(|l| l.ends_with("renamed.txt")),
        "{second:?}"
    );

    let bad = dir.path().join("bad");
    let wrong = format!("sha256:{}", "0".repeat(64));
    write_files(
        &bad,
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD --checksum={wrong} {base}/x /x\n"),
        )],
    );
    let stderr = fails(imgbuild(&root, &["build", bad.to_str().unwrap()]));
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
}

#[test]
fn copy_heredoc_parents_and_exclude() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    let dockerfile = "FROM scratch\nARG NAME=world\n\
        COPY <<EOF /greeting.txt\nhello ${NAME}\nEOF\n\
        COPY <<'EOF' /literal.txt\nhello ${NAME}\nEOF\n\
        COPY --parents src/a/*.rs /keep/\n\
        COPY --exclude=*.md docs /docs/\n";
    write_files(
        &ctx,
        &[
            ("Dockerfile", dockerfile),
            ("src/a/x.rs", "x"),
            ("src/a/y.txt", "y"),
            ("docs/guide.txt", "g"),
            ("docs/README.md", "r"),
        ],
    );
    build(&root, &ctx, &["-t", "heredoc:1"]);
    let all: Vec<String> = (0..4)
        .flat_map(|i| layer_listing(&root, "heredoc:1", i))
        .collect();
    for expected in [
        "greeting.txt",
        "literal.txt",
        "keep/src/a/x.rs",
        "docs/guide.txt",
    ] {
        assert!(
            all.iter().any(|l| l.ends_with(expected)),
            "{expected} missing: {all:?}"
        );
    }
    assert!(
        !all.iter().any(|l| l.ends_with("README.md")),
        "excluded file copied: {all:?}"
    );
    assert!(
        !all.iter().any(|l| l.ends_with("y.txt")),
        "unmatched file copied: {all:?}"
    );

    let out = dir.path().join("out.tar");
    ok(imgbuild(
        &root,
        &[
            "save",
            "heredoc:1",
            "--format",
            "oci",
            "-o",
            out.to_str().unwrap(),
        ],
    ));
    let extract = dir.path().join("extract");
    std::fs::create_dir(&extract).unwrap();
    run(
        "tar",
        &[
            "-xf",
            out.to_str().unwrap(),
            "-C",
            extract.to_str().unwrap(),
        ],
    );
    let info = inspect(&root, "heredoc:1");
    let first = info["Manifest"]["layers"][0]["digest"].as_str().unwrap();
    let blob = extract
        .join("blobs/sha256")
        .join(first.trim_start_matches("sha256:"));
    let text = run("tar", &["-xzOf", blob.to_str().unwrap(), "greeting.txt"]);
    assert_eq!(text, "hello world\n");
    let second = info["Manifest"]["layers"][1]["digest"].as_str().unwrap();
    let blob = extract
        .join("blobs/sha256")
        .join(second.trim_start_matches("sha256:"));
    let text = run("tar", &["-xzOf", blob.to_str().unwrap(), "literal.txt"]);
    assert_eq!(text, "hello ${NAME}\n");
}

#[test]
fn onbuild_triggers_run_when_the_image_is_used_as_a_base() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let parent = dir.path().join("parent");
    write_files(
        &parent,
        &[(
            "Dockerfile",
            "FROM scratch\nONBUILD COPY trigger.txt /from-trigger.txt\n",
        )],
    );
    build(&root, &parent, &["-t", "onbuild-parent:1"]);
    let config = inspect(&root, "onbuild-parent:1");
    assert_eq!(
        config["Config"]["config"]["OnBuild"][0],
        "COPY trigger.txt /from-trigger.txt"
    );

    let child = dir.path().join("child");
    write_files(
        &child,
        &[
            ("Dockerfile", "FROM onbuild-parent:1\n"),
            ("trigger.txt", "t"),
        ],
    );
    build(&root, &child, &["-t", "onbuild-child:1"]);
    let listing = layer_listing(&root, "onbuild-child:1", 0);
    assert!(
        listing.iter().any(|l| l.ends_with("from-trigger.txt")),
        "{listing:?}"
    );
    let config = inspect(&root, "onbuild-child:1");
    assert!(
        config["Config"]["config"]
            .get("OnBuild")
            .is_none_or(|v| v.is_null())
    );
}

#[test]
fn source_date_epoch_makes_builds_reproducible_across_fresh_stores() {
    let dir = temp_dir();
    let ctx = dir.path().join("ctx");
    write_files(
        &ctx,
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY . /app/\nENV X=1\nWORKDIR /app/w\nLABEL a=b\n",
            ),
            ("a.txt", "a"),
            ("dir/b.txt", "b"),
        ],
    );
    let digests: Vec<String> = ["one", "two"]
        .iter()
        .map(|name| {
            let root = dir.path().join(name);
            let out = imgbuild_env(
                &root,
                &["build", "-q", ctx.to_str().unwrap()],
                &[("SOURCE_DATE_EPOCH", "1700000000")],
            );
            ok(out).trim().to_string()
        })
        .collect();
    assert!(digests[0].starts_with("sha256:"), "{digests:?}");
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn image_commands_tag_inspect_rmi_save_and_iidfile() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    write_files(
        &ctx,
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x")],
    );
    let iidfile = dir.path().join("iid");
    let oci = dir.path().join("image-oci.tar");
    let oci_output = format!("type=oci,dest={}", oci.display());
    let digest = build(
        &root,
        &ctx,
        &[
            "-t",
            "cmds:1",
            "--iidfile",
            iidfile.to_str().unwrap(),
            "--output",
            &oci_output,
        ],
    );
    assert_eq!(std::fs::read_to_string(&iidfile).unwrap(), digest);
    ok(imgbuild(
        &root,
        &["tag", "cmds:1", "127.0.0.1:5000/team/cmds:2"],
    ));
    let images = ok(imgbuild(&root, &["images"]));
    assert!(
        images.contains("cmds") && images.contains("127.0.0.1:5000/team/cmds"),
        "{images}"
    );
    let info = inspect(&root, "127.0.0.1:5000/team/cmds:2");
    assert_eq!(info["Digest"], digest);
    assert_eq!(inspect(&root, &digest[7..19])["Digest"], digest);

    let skopeo = run(
        "skopeo",
        &["inspect", &format!("oci-archive:{}", oci.display())],
    );
    let skopeo: Value = serde_json::from_str(&skopeo).unwrap();
    assert_eq!(skopeo["Digest"], digest);

    ok(imgbuild(&root, &["rmi", "cmds:1"]));
    fails(imgbuild(&root, &["inspect", "cmds:1"]));
    ok(imgbuild(&root, &["inspect", "127.0.0.1:5000/team/cmds:2"]));
}

#[test]
fn pull_fetches_a_base_image_once() {
    let base = base_image();
    let dir = temp_dir();
    let root = dir.path().join("root");
    let first = ok(imgbuild(&root, &["pull", "-q", &base]));
    let blobs_after_first = tree_listing(&root.join("blobs"));
    let second = ok(imgbuild(&root, &["pull", "-q", &base]));
    assert_eq!(first, second);
    assert_eq!(blobs_after_first, tree_listing(&root.join("blobs")));
    let ctx = dir.path().join("ctx");
    write_files(
        &ctx,
        &[
            ("Dockerfile", &format!("FROM {base}\nCOPY f /f\n")),
            ("f", "x"),
        ],
    );
    build(&root, &ctx, &["-t", "on-base:1"]);
    let info = inspect(&root, "on-base:1");
    assert_eq!(info["Manifest"]["layers"].as_array().unwrap().len(), 2);
}
