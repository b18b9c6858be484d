//! Tests of [`super::plan_copy`] on temporary directory trees.

use std::os::unix::fs::symlink;
use std::path::Path;

use super::*;
use crate::dockerfile::IgnoreMatcher;

fn tree(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        let path = dir.path().join(file);
        if let Some(dir_path) = file.strip_suffix('/') {
            std::fs::create_dir_all(dir.path().join(dir_path)).unwrap();
        } else {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, file.as_bytes()).unwrap();
        }
    }
    dir
}

fn plan(
    root: &Path,
    sources: &[&str],
    dest: &str,
    opts: &CopyOptions,
) -> Result<Vec<String>, ContextError> {
    let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
    plan_copy(root, &sources, dest, "/work", opts)
        .map(|items| items.into_iter().map(|i| i.image_path).collect())
}

fn plan_ok(root: &Path, sources: &[&str], dest: &str) -> Vec<String> {
    plan(root, sources, dest, &CopyOptions::default()).unwrap()
}

#[test]
fn single_file_to_exact_path_or_into_directory() {
    let ctx = tree(&["a.txt"]);
    assert_eq!(
        plan_ok(ctx.path(), &["a.txt"], "/dst/b.txt"),
        vec!["/dst/b.txt"]
    );
    assert_eq!(plan_ok(ctx.path(), &["a.txt"], "/dst/"), vec!["/dst/a.txt"]);
    assert_eq!(plan_ok(ctx.path(), &["./a.txt"], "."), vec!["/work/a.txt"]);
    assert_eq!(
        plan_ok(ctx.path(), &["/a.txt"], "rel/x"),
        vec!["/work/rel/x"]
    );
}

#[test]
fn item_carries_host_path_and_metadata() {
    let ctx = tree(&["a.txt"]);
    let items = plan_copy(
        ctx.path(),
        &["a.txt".to_string()],
        "/x",
        "/",
        &CopyOptions::default(),
    )
    .unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].host_path, ctx.path().join("a.txt"));
    assert!(items[0].metadata.is_file());
    assert_eq!(items[0].metadata.len(), "a.txt".len() as u64);
}

#[test]
fn multiple_sources_make_dest_a_directory() {
    let ctx = tree(&["a", "b"]);
    assert_eq!(
        plan_ok(ctx.path(), &["a", "b"], "/dst"),
        vec!["/dst/a", "/dst/b"]
    );
}

#[test]
fn directory_copies_its_contents_recursively_with_empty_dirs() {
    let ctx = tree(&["src/main.rs", "src/lib/mod.rs", "src/empty/", "other"]);
    assert_eq!(
        plan_ok(ctx.path(), &["src"], "/app"),
        vec!["/app/empty", "/app/lib", "/app/lib/mod.rs", "/app/main.rs"]
    );
}

#[test]
fn directory_source_destination_is_created_fresh() {
    let ctx = tree(&["empty/", "full/f"]);
    let sources = vec!["empty".to_string(), "full".to_string()];
    let plan = plan_copy_full(ctx.path(), &sources, "/d/", "/", &CopyOptions::default()).unwrap();
    assert_eq!(plan.fresh_dirs, vec!["/d"]);
    let paths: Vec<&str> = plan.items.iter().map(|i| i.image_path.as_str()).collect();
    assert_eq!(paths, vec!["/d/f"]);
    let plan = plan_copy_full(
        ctx.path(),
        &["empty".to_string()],
        "e",
        "/w",
        &CopyOptions::default(),
    )
    .unwrap();
    assert_eq!(plan.fresh_dirs, vec!["/w/e"]);
    assert!(plan.items.is_empty());
}

#[test]
fn whole_context_to_workdir() {
    let ctx = tree(&["a", "d/b"]);
    assert_eq!(
        plan_ok(ctx.path(), &["."], "."),
        vec!["/work/a", "/work/d", "/work/d/b"]
    );
}

#[test]
fn wildcards_match_per_component() {
    let ctx = tree(&["a.rs", "b.rs", "c.txt", "x/d.rs", "y/e.rs", "y/f.txt"]);
    assert_eq!(
        plan_ok(ctx.path(), &["*.rs"], "/d/"),
        vec!["/d/a.rs", "/d/b.rs"]
    );
    assert_eq!(
        plan_ok(ctx.path(), &["*/*.rs"], "/d/"),
        vec!["/d/d.rs", "/d/e.rs"]
    );
    assert_eq!(
        plan_ok(ctx.path(), &["[ab].rs"], "/d/"),
        vec!["/d/a.rs", "/d/b.rs"]
    );
    assert_eq!(
        plan_ok(ctx.path(), &["?.txt"], "/one"),
        vec!["/one"],
        "a single match keeps the exact dest"
    );
}

#[test]
fn missing_plain_source_is_an_error_but_empty_wildcard_is_not() {
    let ctx = tree(&["a"]);
    let err = plan(ctx.path(), &["missing"], "/d/", &CopyOptions::default()).unwrap_err();
    assert!(
        matches!(&err, ContextError::NotFound { source_path } if source_path == "missing"),
        "{err}"
    );
    assert_eq!(err.to_string(), "file not found in build context: missing");
    assert_eq!(
        plan_ok(ctx.path(), &["*.none"], "/d/"),
        Vec::<String>::new()
    );
    // BuildKit still needs the directory part of a wildcard to exist.
    assert!(matches!(
        plan(ctx.path(), &["nodir/*"], "/d/", &CopyOptions::default()),
        Err(ContextError::NotFound { .. })
    ));
    assert!(matches!(
        plan(ctx.path(), &[], "/d/", &CopyOptions::default()),
        Err(ContextError::NoSources)
    ));
}

#[test]
fn sources_outside_the_root_are_rejected() {
    let ctx = tree(&["a"]);
    for source in ["../a", "x/../../a"] {
        let err = plan(ctx.path(), &[source], "/d/", &CopyOptions::default()).unwrap_err();
        assert!(
            matches!(err, ContextError::OutsideContext { .. }),
            "{source}: {err}"
        );
        assert!(err.to_string().contains("outside the build context"));
    }
}

#[test]
fn symlinks_inside_directories_stay_symlinks() {
    let ctx = tree(&["d/target"]);
    symlink("target", ctx.path().join("d/link")).unwrap();
    symlink("/etc/passwd", ctx.path().join("d/abs")).unwrap();
    let items = plan_copy(
        ctx.path(),
        &["d".to_string()],
        "/x",
        "/",
        &CopyOptions::default(),
    )
    .unwrap();
    let names: Vec<&str> = items.iter().map(|i| i.image_path.as_str()).collect();
    assert_eq!(names, vec!["/x/abs", "/x/link", "/x/target"]);
    assert!(items[0].metadata.file_type().is_symlink());
    assert!(items[1].metadata.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(&items[1].host_path).unwrap(),
        Path::new("target")
    );
}

#[test]
fn a_symlink_source_is_followed_inside_the_root() {
    let ctx = tree(&["real/f"]);
    symlink("real", ctx.path().join("link")).unwrap();
    symlink("/real/f", ctx.path().join("abs-link")).unwrap();
    assert_eq!(plan_ok(ctx.path(), &["link"], "/x"), vec!["/x/f"]);
    let items = plan_copy(
        ctx.path(),
        &["abs-link".to_string()],
        "/y",
        "/",
        &CopyOptions::default(),
    )
    .unwrap();
    assert_eq!(items[0].host_path, ctx.path().join("real/f"));
    assert!(items[0].metadata.is_file());
    symlink("../../../etc/passwd", ctx.path().join("escape")).unwrap();
    assert!(matches!(
        plan(ctx.path(), &["escape"], "/z", &CopyOptions::default()),
        Err(ContextError::NotFound { .. })
    ));
}

#[test]
fn dockerignore_hides_files_as_if_absent() {
    let ctx = tree(&[
        "keep.txt",
        "secret.txt",
        "logs/a.log",
        "docs/README.md",
        "docs/other.md",
    ]);
    let ignore = IgnoreMatcher::parse("secret.txt\nlogs\ndocs\n!docs/README.md\n").unwrap();
    let opts = CopyOptions {
        ignore: Some(&ignore),
        ..Default::default()
    };
    assert_eq!(
        plan(ctx.path(), &["."], "/app", &opts).unwrap(),
        vec!["/app/docs", "/app/docs/README.md", "/app/keep.txt"]
    );
    assert!(matches!(
        plan(ctx.path(), &["secret.txt"], "/x", &opts),
        Err(ContextError::NotFound { .. })
    ));
    assert_eq!(
        plan(ctx.path(), &["*.txt"], "/d/", &opts).unwrap(),
        vec!["/d/keep.txt"]
    );
}

#[test]
fn excludes_match_relative_to_the_source_base() {
    let ctx = tree(&[
        "home.txt",
        "homer.md",
        "src/a.txt",
        "src/b.rs",
        "src/sub/c.txt",
    ]);
    let excludes = vec!["*.txt".to_string()];
    let opts = CopyOptions {
        excludes: &excludes,
        ..Default::default()
    };
    assert_eq!(
        plan(ctx.path(), &["hom*"], "/d/", &opts).unwrap(),
        vec!["/d/homer.md"]
    );
    assert_eq!(
        plan(ctx.path(), &["src"], "/s", &opts).unwrap(),
        vec!["/s/b.rs", "/s/sub", "/s/sub/c.txt"]
    );
    let deep = vec!["**/*.txt".to_string()];
    let opts = CopyOptions {
        excludes: &deep,
        ..Default::default()
    };
    assert_eq!(
        plan(ctx.path(), &["src"], "/s", &opts).unwrap(),
        vec!["/s/b.rs", "/s/sub"]
    );
}

#[test]
fn parents_keep_source_paths() {
    let ctx = tree(&["x/a/f.txt", "x/b/g.txt", "y/h.txt"]);
    let opts = CopyOptions {
        parents: true,
        ..Default::default()
    };
    assert_eq!(
        plan(ctx.path(), &["x/*/*.txt", "y/h.txt"], "/dst/", &opts).unwrap(),
        vec![
            "/dst/x",
            "/dst/x/a",
            "/dst/x/a/f.txt",
            "/dst/x/b",
            "/dst/x/b/g.txt",
            "/dst/y",
            "/dst/y/h.txt"
        ]
    );
    assert_eq!(
        plan(ctx.path(), &["./x/./a/f.txt"], "/dst/", &opts).unwrap(),
        vec!["/dst/a", "/dst/a/f.txt"]
    );
    assert_eq!(
        plan(ctx.path(), &["x/a"], "/p", &opts).unwrap(),
        vec!["/p/x", "/p/x/a", "/p/x/a/f.txt"]
    );
}

#[test]
fn later_sources_win_for_the_same_image_path() {
    let ctx = tree(&["one/f", "two/f"]);
    let items = plan_copy(
        ctx.path(),
        &["one".to_string(), "two".to_string()],
        "/d/",
        "/",
        &CopyOptions::default(),
    )
    .unwrap();
    let f = items.iter().find(|i| i.image_path == "/d/f").unwrap();
    assert_eq!(f.host_path, ctx.path().join("two/f"));
    assert_eq!(items.len(), 1);
}

#[test]
fn items_are_ordered_component_by_component_across_sources() {
    // Byte order would put `a.txt` before `a/b` ('.' < '/'); component order puts a directory's
    // contents right after it. Sources interleave, and `y/a.txt` (later) wins over `a.txt`.
    let ctx = tree(&["a.txt", "c/b", "c/c/d", "ab", "x/a/b", "x/a/e", "y/a.txt"]);
    let sources: Vec<String> = ["a.txt", "c", "ab", "x", "y"].map(String::from).to_vec();
    let items = plan_copy(ctx.path(), &sources, "/d/", "/", &CopyOptions::default()).unwrap();
    let paths: Vec<&str> = items.iter().map(|i| i.image_path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/d/a", "/d/a/b", "/d/a/e", "/d/a.txt", "/d/ab", "/d/b", "/d/c", "/d/c/d"
        ]
    );
    assert_eq!(items[3].host_path, ctx.path().join("y/a.txt"));
}

#[test]
fn bad_wildcard_and_exclude_are_errors() {
    let ctx = tree(&["a"]);
    assert!(matches!(
        plan(ctx.path(), &["a["], "/d/", &CopyOptions::default()),
        Err(ContextError::BadPattern { .. })
    ));
    let excludes = vec!["[".to_string()];
    let opts = CopyOptions {
        excludes: &excludes,
        ..Default::default()
    };
    assert!(matches!(
        plan(ctx.path(), &["a"], "/d/", &opts),
        Err(ContextError::BadExclude(_))
    ));
}

/// The context and `.dockerignore` of a real `docker build` (BuildKit, Docker 20.10) run with
/// `COPY . /`; the expected list is what that build produced.
#[test]
fn matches_docker_buildkit_on_a_mixed_dockerignore() {
    let ctx = tree(&[
        "docs/README.md",
        "docs/other.md",
        "docs/sub/README.md",
        "logs/1.log",
        "a/b/c/keep.go",
        "a/b/c/drop.txt",
        "node_modules/x/i.js",
        "foo/f",
        "xfoo/f",
        "top.md",
        "README.md",
        "README-secret.md",
        "tempa",
        "temp",
        "somefile.go",
        ".hidden",
        "somedir/temporary.txt",
        "somedir/subdir/temp1",
        "somedir/temp/in",
        "Dockerfile",
    ]);
    let rules = "# comment\n*/temp*\n*/*/temp*\ntemp?\ndocs\n!docs/README.md\nlogs/\n**/*.txt\nnode_modules\n\
                 **/foo\n*.md\n!README*.md\nREADME-secret.md\n";
    std::fs::write(ctx.path().join(".dockerignore"), rules).unwrap();
    let ignore =
        crate::dockerfile::ignore::load_for_build(ctx.path(), &ctx.path().join("Dockerfile"))
            .unwrap();
    let opts = CopyOptions {
        ignore: Some(&ignore),
        ..Default::default()
    };
    assert_eq!(
        plan(ctx.path(), &["."], "/", &opts).unwrap(),
        vec![
            "/.dockerignore",
            "/.hidden",
            "/Dockerfile",
            "/README.md",
            "/a",
            "/a/b",
            "/a/b/c",
            "/a/b/c/keep.go",
            "/docs",
            "/docs/README.md",
            "/somedir",
            "/somedir/subdir",
            "/somefile.go",
            "/temp",
            "/xfoo",
            "/xfoo/f",
        ]
    );
}

/// COPY forms checked against a real `docker build` (BuildKit, Docker 20.10); the executor adds the
/// missing parents of each destination (such as `/w1`).
#[test]
fn matches_docker_buildkit_on_copy_forms() {
    let ctx = tree(&["a/b/c/keep.go", "somefile.go", "d1/e/x", "d2/y"]);
    symlink("a/b", ctx.path().join("linkdir")).unwrap();
    symlink("somefile.go", ctx.path().join("linkfile")).unwrap();
    let cases: &[(&[&str], &str, &[&str])] = &[
        (&["*.go"], "/w1/", &["/w1/somefile.go"]),
        (&["a"], "/w2", &["/w2/b", "/w2/b/c", "/w2/b/c/keep.go"]),
        (&["a/b/c/keep.go"], "/w3", &["/w3"]),
        (&["d?"], "/w4/", &["/w4/e", "/w4/e/x", "/w4/y"]),
        (&["linkdir"], "/w5", &["/w5/c", "/w5/c/keep.go"]),
        (&["linkfile"], "/w6", &["/w6"]),
        (&["d1", "d2"], "/w7", &["/w7/e", "/w7/e/x", "/w7/y"]),
        (
            &["link*"],
            "/w8/",
            &["/w8/c", "/w8/c/keep.go", "/w8/linkfile"],
        ),
    ];
    for (sources, dest, expected) in cases {
        assert_eq!(
            plan_ok(ctx.path(), sources, dest),
            *expected,
            "COPY {sources:?} {dest}"
        );
    }
    let items = plan_copy(
        ctx.path(),
        &["linkfile".to_string()],
        "/w6",
        "/",
        &CopyOptions::default(),
    )
    .unwrap();
    assert!(
        items[0].metadata.is_file(),
        "a symlink named as the source is followed"
    );
}
