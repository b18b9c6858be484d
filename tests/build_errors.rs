//! Bad input gets one clear error naming what and where, a non-zero exit, and leaves the
//! store exactly as it was.

mod common;

use common::*;
use std::path::Path;

/// The store's index and blobs, to compare before and after a failed command.
fn store_state(root: &Path) -> (String, Vec<String>) {
    let index = std::fs::read_to_string(root.join("index.json")).unwrap_or_default();
    (index, tree_listing(&root.join("blobs")))
}

/// Builds a first image so the store is not empty, then checks that `args` fails with a
/// message containing every one of `expected` and changes nothing.
fn assert_build_fails(files: &[(&str, &str)], args: &[&str], expected: &[&str]) {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let good = dir.path().join("good");
    std::fs::create_dir_all(&good).unwrap();
    write_files(&good, &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x")]);
    ok(imgbuild(&root, &["build", "-q", "-t", "good:1", good.to_str().unwrap()]));
    let before = store_state(&root);

    let context = dir.path().join("ctx");
    std::fs::create_dir_all(&context).unwrap();
    write_files(&context, files);
    let mut full_args = vec!["build"];
    full_args.extend_from_slice(args);
    let context_text = context.to_str().unwrap().to_string();
    full_args.push(&context_text);
    let stderr = fails(imgbuild(&root, &full_args));
    for needle in expected {
        assert!(
            stderr.contains(needle),
            "error should mention {needle:?}; got:\n{stderr}"
        );
    }
    assert_eq!(store_state(&root), before, "a failed build changed the store");
}

#[test]
fn missing_dockerfile_is_reported_with_its_path() {
    assert_build_fails(&[("other", "x")], &[], &["Dockerfile", "No such file"]);
}

#[test]
fn syntax_error_names_file_line_and_column() {
    assert_build_fails(
        &[("Dockerfile", "FROM scratch\nCOPY a\n")],
        &[],
        &["Dockerfile:2"],
    );
}

#[test]
fn unknown_instruction_is_named() {
    assert_build_fails(
        &[("Dockerfile", "FROM scratch\nFORM x\n")],
        &[],
        &["Dockerfile:2", "FORM"],
    );
}

#[test]
fn unknown_copy_from_stage_is_reported() {
    assert_build_fails(
        &[("Dockerfile", "FROM scratch\nCOPY --from=nosuchstage /x /x\n")],
        &[],
        &["Dockerfile:2", "nosuchstage"],
    );
}

#[test]
fn missing_copy_source_is_reported() {
    assert_build_fails(
        &[("Dockerfile", "FROM scratch\nCOPY missing.txt /\n")],
        &[],
        &["Dockerfile:2", "missing.txt"],
    );
}

#[test]
fn copy_source_outside_the_context_is_refused() {
    assert_build_fails(
        &[("Dockerfile", "FROM scratch\nCOPY ../secret /\n")],
        &[],
        &["Dockerfile:2", "outside"],
    );
}

#[test]
fn unreachable_registry_is_reported() {
    assert_build_fails(
        &[("Dockerfile", "FROM 127.0.0.1:1/nothing:here\n")],
        &[],
        &["Dockerfile:1", "127.0.0.1:1"],
    );
}

#[test]
fn unknown_image_is_reported() {
    let registry = peer_registry();
    let dockerfile = format!("FROM {registry}/no/such-image:missing\n");
    assert_build_fails(
        &[("Dockerfile", &dockerfile)],
        &[],
        &["Dockerfile:1", "no/such-image"],
    );
}

#[test]
fn bad_build_arg_is_reported() {
    assert_build_fails(
        &[("Dockerfile", "FROM scratch\n")],
        &["--build-arg", "=oops"],
        &["--build-arg", "=oops"],
    );
}

#[test]
fn unsupported_platform_is_reported() {
    assert_build_fails(
        &[("Dockerfile", "FROM scratch\n")],
        &["--platform", "linux/s390x"],
        &["linux/s390x", "not supported"],
    );
}

#[test]
fn unknown_target_is_reported() {
    assert_build_fails(
        &[("Dockerfile", "FROM scratch AS a\n")],
        &["--target", "b"],
        &["target", "\"b\""],
    );
}
