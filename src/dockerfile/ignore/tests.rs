//! `.dockerignore` cases from Docker's documentation and in the spirit of moby patternmatcher's tests.

use super::*;

fn matcher(text: &str) -> IgnoreMatcher {
    IgnoreMatcher::parse(text).unwrap()
}

fn excluded(text: &str, path: &str) -> bool {
    matcher(text).is_excluded(path, false)
}

#[test]
fn documented_example_temp_patterns() {
    let m = matcher("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
    assert!(m.is_excluded("somedir/temporary.txt", false));
    assert!(m.is_excluded("somedir/temp", true));
    assert!(m.is_excluded("somedir/subdir/temporary.txt", false));
    assert!(m.is_excluded("tempa", false));
    assert!(m.is_excluded("tempb", false));
    assert!(
        !m.is_excluded("temporary.txt", false),
        "*/temp* needs one directory level"
    );
    assert!(
        !m.is_excluded("temp", false),
        "temp? needs exactly one more character"
    );
    assert!(!m.is_excluded("a/b/c/temp1", false));
    assert!(
        !m.is_excluded("# comment", false),
        "a comment line is not a pattern"
    );
}

#[test]
fn documented_leading_slash_is_the_root() {
    for text in ["/foo/bar", "foo/bar"] {
        let m = matcher(text);
        assert!(m.is_excluded("foo/bar", false), "{text}");
        assert!(
            m.is_excluded("foo/bar/inside.txt", false),
            "{text}: a matched directory hides its contents"
        );
        assert!(!m.is_excluded("bar", false), "{text}");
        assert!(!m.is_excluded("x/foo/bar", false), "{text}");
        assert!(!m.is_excluded("foo", true), "{text}");
    }
}

#[test]
fn documented_double_star_matches_any_depth() {
    let m = matcher("**/*.go\n");
    assert!(m.is_excluded("main.go", false));
    assert!(m.is_excluded("a/b/c/x.go", false));
    assert!(!m.is_excluded("a/b/c/x.rs", false));
}

#[test]
fn documented_exceptions_last_match_wins() {
    let m = matcher("*.md\n!README.md\n");
    assert!(m.is_excluded("CHANGES.md", false));
    assert!(!m.is_excluded("README.md", false));

    let m = matcher("*.md\n!README*.md\nREADME-secret.md\n");
    assert!(m.is_excluded("CHANGES.md", false));
    assert!(!m.is_excluded("README.md", false));
    assert!(!m.is_excluded("README-public.md", false));
    assert!(m.is_excluded("README-secret.md", false));

    let m = matcher("*.md\nREADME-secret.md\n!README*.md\n");
    assert!(!m.is_excluded("README-secret.md", false));
    assert!(m.is_excluded("other.md", false));
}

#[test]
fn documented_include_only_with_star_and_exceptions() {
    let m = matcher("*\n!src\n!Cargo.toml\n");
    assert!(m.is_excluded("target", true));
    assert!(m.is_excluded("target/debug/x", false));
    assert!(!m.is_excluded("src", true));
    assert!(!m.is_excluded("src/main.rs", false));
    assert!(!m.is_excluded("Cargo.toml", false));
}

#[test]
fn whitespace_cleaning_and_comments() {
    let m = matcher("  foo/../bar/  \n./baz//qux\n#foo\n\n");
    assert!(m.is_excluded("bar", true));
    assert!(m.is_excluded("baz/qux", false));
    assert!(!m.is_excluded("foo", false));
    // Only a '#' in column 1 starts a comment.
    assert!(matcher(" #x").is_excluded("#x", false));
}

#[test]
fn parent_directory_exclusion_and_reinclusion() {
    assert!(!excluded("docs\n!docs/README.md\n", "docs/README.md"));
    assert!(excluded("docs\n!docs/README.md\n", "docs/other.md"));
    assert!(!excluded("docs/\n!docs/README.md\n", "docs/README.md"));
    assert!(!excluded("docs/*\n!docs/README.md\n", "docs/README.md"));
    assert!(excluded("*.go\n!fileutils.go\n", "other.go"));
    assert!(!excluded("*.go\n!fileutils.go\n", "fileutils.go"));
    assert!(excluded("!fileutils.go\n*.go\n", "fileutils.go"));
    assert!(!excluded("**\n!util/docker/web\n", "util/docker/web/foo"));
    assert!(excluded(
        "**\n!util/docker/web\nutil/docker/web/foo\n",
        "util/docker/web/foo"
    ));
    assert!(!excluded(
        "**\n!dist/*.whl\n",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"
    ));
}

#[test]
fn the_root_is_never_excluded() {
    assert!(!excluded("*\n", "."));
    assert!(!excluded("**\n", ""));
}

/// (pattern, path, matches-directly-or-through-a-parent), after moby patternmatcher's table.
const SINGLE_PATTERN_CASES: &[(&str, &str, bool)] = &[
    ("**", "file", true),
    ("**", "file/", true),
    ("**/", "file", true),
    ("**", "dir/file", true),
    ("**/**", "dir/file", true),
    ("dir/**", "dir/file", true),
    ("dir/**", "dir/dir2/file", true),
    ("**/dir", "dir", true),
    ("**/dir", "dir/file", true),
    ("**/dir2/*", "dir/dir2/file", true),
    ("**/dir2/*", "dir/dir2/file/", true),
    ("**/dir2/**", "dir/dir2/dir3/file", true),
    ("**file", "file", true),
    ("**file", "dir/file", true),
    ("**/file", "dir/file", true),
    ("**file", "dir/dir/file", true),
    ("**/file*", "dir/dir/file.txt", true),
    ("**/file*txt", "dir/dir/file.txt", true),
    ("**/file*.txt*", "dir/dir/file.txt", true),
    ("**/**/*.txt", "dir/dir/file.txt", true),
    ("**/**/*.txt2", "dir/dir/file.txt", false),
    ("**/*.txt", "file.txt", true),
    ("**/**/*.txt", "file.txt", true),
    ("a**/*.txt", "a/file.txt", true),
    ("a**/*.txt", "a/dir/file.txt", true),
    ("a**/*.txt", "a/dir/dir/file.txt", true),
    ("a/*.txt", "a/dir/file.txt", false),
    ("a/*.txt", "a/file.txt", true),
    ("a/*.txt**", "a/file.txt", true),
    ("a[b-d]e", "ae", false),
    ("a[b-d]e", "ace", true),
    ("a[b-d]e", "aae", false),
    ("a[^b-d]e", "aze", true),
    (".*", ".foo", true),
    (".*", "foo", false),
    ("abc.def", "abcdef", false),
    ("abc.def", "abc.def", true),
    ("abc?def", "abcZdef", true),
    ("abc?def", "abcdef", false),
    ("**/foo/bar", "foo/bar", true),
    ("**/foo/bar", "dir/dir2/foo/bar", true),
    ("abc/**", "abc", false),
    ("abc/**", "abc/def/ghi", true),
    ("**/.foo", ".foo", true),
    ("**/.foo", "bar.foo", false),
    ("a(b)c/def", "a(b)c/def", true),
    ("a(b)c/def", "a(b)c/xyz", false),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
    (
        "dist/*.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        true,
    ),
    ("a\\\\", "a\\", true),
    ("a\\*b", "a*b", true),
    ("a\\*b", "axb", false),
    ("*", "fileutils.go", true),
    ("*.go", "fileutils.go", true),
];

#[test]
fn single_pattern_table() {
    for (pattern, path, expected) in SINGLE_PATTERN_CASES {
        assert_eq!(
            excluded(pattern, path),
            *expected,
            "pattern {pattern:?} path {path:?}"
        );
    }
}

#[test]
fn bad_patterns_are_errors_with_line() {
    match IgnoreMatcher::parse("ok\n[\n") {
        Err(IgnoreError::BadPattern { line, pattern }) => {
            assert_eq!((line, pattern.as_str()), (2, "["))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        IgnoreMatcher::parse("!\n"),
        Err(IgnoreError::LoneExclamation { line: 1 })
    ));
    assert!(matches!(
        IgnoreMatcher::parse("  !  \n"),
        Err(IgnoreError::LoneExclamation { line: 1 })
    ));
}

#[test]
fn exclusion_flag_reports_reincludes() {
    assert!(matcher("a\n!a/b\n").has_exclusions());
    assert!(!matcher("a\n").has_exclusions());
    assert!(IgnoreMatcher::default().is_empty());
}

#[test]
fn from_patterns_treats_hash_as_a_pattern() {
    let m = IgnoreMatcher::from_patterns(&["#x", "*.tmp"]).unwrap();
    assert!(m.is_excluded("#x", false));
    assert!(m.is_excluded("a.tmp", false));
}

#[test]
fn clean_path_like_go() {
    for (input, expected) in [
        ("", "."),
        ("a/b/", "a/b"),
        ("a//b", "a/b"),
        ("./a", "a"),
        ("a/../b", "b"),
        ("../a", "../a"),
        ("/../a", "/a"),
        ("/", "/"),
        ("a/./b/..", "a"),
    ] {
        assert_eq!(clean_path(input), expected, "{input}");
    }
}

#[test]
fn load_for_build_prefers_dockerfile_specific_file() {
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path();
    std::fs::create_dir(context.join("build")).unwrap();
    let dockerfile = context.join("build").join("app.Dockerfile");
    std::fs::write(&dockerfile, "FROM scratch\n").unwrap();

    let none = load_for_build(context, &dockerfile).unwrap();
    assert!(none.is_empty());

    std::fs::write(context.join(".dockerignore"), "from-context\n").unwrap();
    let general = load_for_build(context, &dockerfile).unwrap();
    assert!(general.is_excluded("from-context", false));

    std::fs::write(
        context.join("build").join("app.Dockerfile.dockerignore"),
        "specific\n",
    )
    .unwrap();
    let specific = load_for_build(context, &dockerfile).unwrap();
    assert!(specific.is_excluded("specific", false));
    assert!(!specific.is_excluded("from-context", false));

    std::fs::write(context.join(".dockerignore"), "[\n").unwrap();
    std::fs::remove_file(context.join("build").join("app.Dockerfile.dockerignore")).unwrap();
    let err = load_for_build(context, &dockerfile).unwrap_err();
    assert!(err.to_string().contains(".dockerignore"), "{err}");
}
