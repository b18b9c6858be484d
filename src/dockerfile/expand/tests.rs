//! Expansion cases in the style of BuildKit's `envVarTest` / `wordsTest` tables, written from Docker's
//! documented behaviour.

use super::*;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn word(input: &str, vars: &HashMap<String, String>) -> Result<String, ExpandError> {
    Lexer::new('\\').process_word(input, &|name| vars.get(name).cloned())
}

/// (input, expected; "error" means it must fail), with PWD=/home SHELL=bash KOREAN=한국어 NULL=.
const SINGLE_WORD_CASES: &[(&str, &str)] = &[
    ("hello", "hello"),
    ("he'll'o", "hello"),
    ("he'llo", "error"),
    (r"he\'llo", "he'llo"),
    (r"he\\'llo", "error"),
    (r"abc\tdef", "abctdef"),
    (r#""abc\tdef""#, r"abc\tdef"),
    (r#""abc\\tdef""#, r"abc\tdef"),
    (r"'abc\tdef'", r"abc\tdef"),
    (r"hello\", "hello"),
    (r"hello\\", r"hello\"),
    (r#""hello"#, "error"),
    (r#""hello\""#, "error"),
    (r#""hel'lo""#, "hel'lo"),
    ("'hello", "error"),
    (r"'hello\'", r"hello\"),
    (r"'hello\there'", r"hello\there"),
    (r"'hello\\there'", r"hello\\there"),
    (r#""''""#, "''"),
    ("$.", "$."),
    ("he$1x", "hex"),
    ("he$.x", "he$.x"),
    ("he$pwd.", "he."),
    ("he$PWD", "he/home"),
    (r"he\$PWD", "he$PWD"),
    (r"he\\$PWD", r"he\/home"),
    (r#""he\$PWD""#, "he$PWD"),
    (r#""he\\$PWD""#, r"he\/home"),
    (r"\${}", "${}"),
    (r"\${}aaa", "${}aaa"),
    (r"he\${}", "he${}"),
    (r"he\${}xx", "he${}xx"),
    ("${}", "error"),
    ("${}aaa", "error"),
    ("he${}", "error"),
    ("he${}xx", "error"),
    ("he${hi}", "he"),
    ("he${hi}xx", "hexx"),
    ("he${PWD}", "he/home"),
    ("he${.}", "error"),
    ("he${XXX:-000}xx", "he000xx"),
    ("he${PWD:-000}xx", "he/homexx"),
    ("he${XXX:-$PWD}xx", "he/homexx"),
    ("he${XXX:-${PWD:-yyy}}xx", "he/homexx"),
    ("he${XXX:-${YYY:-yyy}}xx", "heyyyxx"),
    ("he${XXX:YYY}", "error"),
    ("he${XXX?}", "error"),
    ("he${XXX:?}", "error"),
    ("he${PWD?}", "he/home"),
    ("he${PWD:?}", "he/home"),
    ("he${NULL?}", "he"),
    ("he${NULL:?}", "error"),
    ("he${XXX:+${PWD}}xx", "hexx"),
    ("he${PWD:+${XXX}}xx", "hexx"),
    ("he${PWD:+${SHELL}}xx", "hebashxx"),
    ("he${XXX:+000}xx", "hexx"),
    ("he${PWD:+000}xx", "he000xx"),
    ("he${NULL-000}xx", "hexx"),
    ("he${NULL:-000}xx", "he000xx"),
    ("he${NULL+000}xx", "he000xx"),
    ("he${NULL:+000}xx", "hexx"),
    ("'he${XX}'", "he${XX}"),
    (r#""he${PWD}""#, "he/home"),
    (r#""he'$PWD'""#, "he'/home'"),
    (r#""$PWD""#, "/home"),
    ("'$PWD'", "$PWD"),
    (r"'\$PWD'", r"\$PWD"),
    (r#"'"hello"'"#, r#""hello""#),
    (r"'he\$PWD'", r"he\$PWD"),
    ("he${PWD", "error"),
    ("he${PWD:=000}xx", "error"),
    ("he${PWD=000}xx", "error"),
    ("he${PWD:+${PWD}:}xx", "he/home:xx"),
    (r"he${XXX:-\$PWD:}xx", "he$PWD:xx"),
    (r"he${XXX:-\${PWD}z}xx", "he${PWDz}xx"),
    ("안녕하세요", "안녕하세요"),
    ("안'녕'하세요", "안녕하세요"),
    ("안'녕하세요", "error"),
    (r"안녕\'하세요", "안녕'하세요"),
    (r"안\\'녕하세요", "error"),
    ("$KOREAN", "한국어"),
    ("안녕$KOREAN", "안녕한국어"),
    ("${{aaa}", "error"),
    ("${aaa}}", "}"),
    ("${aaa}}}", "}}"),
    ("${aaa:-bbb}}", "bbb}"),
    ("${aaa:-${bbb:-ccc}}}", "ccc}"),
    ("${aaa:-${bbb:-ccc}}z}", "cccz}"),
    ("$}", "$}"),
    ("${PWD#/}", "home"),
    ("${PWD%e}", "/hom"),
    ("${SHELL/sh/SH}", "baSH"),
];

#[test]
fn single_word_table() {
    let vars = env(&[
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]);
    for (input, expected) in SINGLE_WORD_CASES {
        let result = word(input, &vars);
        if *expected == "error" {
            assert!(result.is_err(), "{input:?} should fail, got {result:?}");
        } else {
            assert_eq!(result.as_deref(), Ok(*expected), "input {input:?}");
        }
    }
}

#[test]
fn mandatory_variables_report_their_message() {
    let set = env(&[("VAR", "plain"), ("ARG", "x")]);
    let empty = env(&[("VAR", ""), ("ARG", "x")]);
    let unset = env(&[("ARG", "x")]);
    assert_eq!(word("${VAR:?message here$ARG}", &set).unwrap(), "plain");
    assert!(
        word("${VAR:?message here$ARG}", &empty)
            .unwrap_err()
            .reason
            .contains("message herex")
    );
    assert!(
        word("${VAR:?message here$ARG}", &unset)
            .unwrap_err()
            .reason
            .contains("message herex")
    );
    assert_eq!(word("${VAR?message here$ARG}", &empty).unwrap(), "");
    let err = word("${VAR?}", &unset).unwrap_err();
    assert_eq!(err.reason, "VAR: is not allowed to be unset");
    assert!(err.to_string().contains("${VAR?}"), "{err}");
}

/// (input, variables, expected).
type PatternCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn prefix_suffix_and_replacement_patterns() {
    let cases: &[PatternCase] = &[
        (r"${FOO%%\**}", &[("FOO", "xx**")], "xx"),
        ("${FOO#*x*y}", &[("FOO", "xxyy")], "y"),
        ("${FOO#*}", &[("FOO", "xxyy")], "xxyy"),
        ("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "x")], "xyy"),
        ("${FOO#}", &[("FOO", "xxyy")], "xxyy"),
        ("${FOO##*x}", &[("FOO", "xxyy")], "yy"),
        (r"${FOO#?\?}", &[("FOO", "???y")], "?y"),
        ("${ABC:-.}${FOO%x}${ABC:-.}", &[("FOO", "xxyy")], ".xxyy."),
        (r"${FOO%%\**\*}", &[("FOO", "a***yy*")], "a"),
        ("${FOO%}", &[("FOO", "xxyy")], "xxyy"),
        (
            "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
            &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", r"\*/")],
            "/foo.*/*.txt - /foo..*.txt",
        ),
        (
            "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
            &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
            "/tmp/bar.txt - /bar.txt",
        ),
        (
            "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
            &[
                ("FOO", "/a/foo/b/c.txt"),
                ("NEEDLE", "/?/"),
                ("REPLACEMENT", "/"),
            ],
            "/foo/b/c.txt - /foo/c.txt",
        ),
        ("${FOO/$BAR/ww}", &[("FOO", "xxyy"), ("BAR", "")], "wwxxyy"),
        ("${FOO///}", &[("FOO", "xxyy")], "xxyy"),
        (
            "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
            &[("FOO", "()[]{}^$.*?|\\x")],
            "x",
        ),
    ];
    for (input, vars, expected) in cases {
        assert_eq!(
            word(input, &env(vars)).as_deref(),
            Ok(*expected),
            "input {input:?}"
        );
    }
    for bad in ["${FOO//ww}", "${FOO//}"] {
        assert!(word(bad, &env(&[("FOO", "xxyy")])).is_err(), "{bad}");
    }
}

#[test]
fn words_split_like_docker() {
    let vars = env(&[
        ("hi", "hi"),
        ("space", "abc  def"),
        ("leading", "  ab c"),
        ("trailing", "ab c   "),
    ]);
    let cases: &[(&str, &[&str])] = &[
        ("hello", &["hello"]),
        ("hello${hi}bye", &["hellohibye"]),
        ("hello${space}bye", &["helloabc", "defbye"]),
        (r#"hello"${space}"bye"#, &["helloabc  defbye"]),
        (r#"hello "${space}"bye"#, &["hello", "abc  defbye"]),
        ("hello${leading}def", &["hello", "ab", "cdef"]),
        (r#"hello"${leading}" def"#, &["hello  ab c", "def"]),
        ("hello${leading}", &["hello", "ab", "c"]),
        ("hello${trailing}", &["helloab", "c"]),
        ("hello${trailing}d", &["helloab", "c", "d"]),
        (r#"hello"${trailing}"d"#, &["helloab c   d"]),
        (r#"hello" there  ""#, &["hello there  "]),
        ("hello there     ", &["hello", "there"]),
        (r"hello\ there", &["hello there"]),
        (r#"hello\" there"#, &["hello\"", "there"]),
        (r#"hello"\\there""#, &[r"hello\there"]),
        (r#"hello"\there""#, &[r"hello\there"]),
        (r"hello'\\there'", &[r"hello\\there"]),
        ("hello'$there'", &["hello$there"]),
        ("80/tcp 443", &["80/tcp", "443"]),
    ];
    let lexer = Lexer::new('\\');
    for (input, expected) in cases {
        let words = lexer
            .process_words(input, &|n| vars.get(n).cloned())
            .unwrap();
        assert_eq!(words, *expected, "input {input:?}");
    }
    assert!(lexer.process_words(r#"hello" there"#, &|_| None).is_err());
}

#[test]
fn backtick_escape_character() {
    let vars = env(&[("PWD", "/home")]);
    let lexer = Lexer::new('`');
    let lookup = |n: &str| vars.get(n).cloned();
    assert_eq!(lexer.process_word("he`$PWD", &lookup).unwrap(), "he$PWD");
    assert_eq!(
        lexer.process_word(r"C:\dir\$PWD", &lookup).unwrap(),
        r"C:\dir\/home"
    );
    assert_eq!(lexer.process_word(r#""a`"b""#, &lookup).unwrap(), r#"a"b"#);
}

#[test]
fn heredoc_lexer_keeps_quotes_and_expands_variables() {
    let vars = env(&[("NAME", "world")]);
    let lexer = Lexer::for_heredoc();
    let lookup = |n: &str| vars.get(n).cloned();
    assert_eq!(
        lexer
            .process_word("echo \"hi $NAME\" 'x'\n", &lookup)
            .unwrap(),
        "echo \"hi world\" 'x'\n"
    );
    assert_eq!(
        lexer
            .process_word("cost \\$5 ${NAME:-'d'}", &lookup)
            .unwrap(),
        "cost $5 world"
    );
    assert_eq!(lexer.process_word("${UNSET:-'d'}", &lookup).unwrap(), "'d'");
}
