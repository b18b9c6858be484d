//! Tests of [`super::parse`]: every instruction's conversion, flags, here-docs, and error locations.

use super::*;

fn parse_ok(text: &str) -> Dockerfile {
    match parse(text, "Dockerfile") {
        Ok(d) => d,
        Err(e) => panic!("{e}\n{}", e.source_line),
    }
}

fn only_instruction(text: &str) -> Instruction {
    let mut d = parse_ok(text);
    assert_eq!(d.stages.len(), 1);
    let mut stage = d.stages.remove(0);
    assert_eq!(stage.instructions.len(), 1, "{:?}", stage.instructions);
    stage.instructions.remove(0).instruction
}

fn err(text: &str) -> DockerfileError {
    parse(text, "Dockerfile").expect_err("expected a parse error")
}

#[test]
fn stages_names_and_global_args() {
    let d = parse_ok(
        "ARG BASE=busybox\nARG TAG\nFROM ${BASE}:latest AS Builder\nRUN true\nFROM --platform=linux/amd64 builder\n",
    );
    assert_eq!(d.escape, '\\');
    assert_eq!(
        d.global_args,
        vec![
            ArgDecl {
                name: "BASE".into(),
                default: Some("busybox".into())
            },
            ArgDecl {
                name: "TAG".into(),
                default: None
            }
        ]
    );
    assert_eq!(d.stages.len(), 2);
    assert_eq!(d.stages[0].name.as_deref(), Some("builder"));
    assert_eq!(d.stages[0].base, "${BASE}:latest");
    assert_eq!(
        d.stages[0].location,
        Location {
            file: "Dockerfile".into(),
            line: 3,
            column: 1
        }
    );
    assert_eq!(d.stages[1].index, 1);
    assert_eq!(d.stages[1].platform.as_deref(), Some("linux/amd64"));
    assert_eq!(d.stages[1].base, "builder");
    assert_eq!(d.stage("BUILDER").map(|s| s.index), Some(0));
    assert_eq!(d.stage("1").map(|s| s.index), Some(1));
}

#[test]
fn instruction_locations_and_source_text() {
    let d = parse_ok("FROM scratch\n\n  RUN echo a \\\n    b\n# trailing comment\nCMD [\"x\"]\n");
    let run = &d.stages[0].instructions[0];
    assert_eq!(run.location.line, 3);
    assert_eq!(run.location.column, 3);
    assert_eq!(run.source_text, "RUN echo a     b");
    assert_eq!(d.stages[0].instructions[1].location.line, 6);
    assert_eq!(d.stages[0].instructions[1].source_text, "CMD [\"x\"]");
}

#[test]
fn run_shell_exec_and_flags() {
    let Instruction::Run(run) = only_instruction(
        "FROM scratch\nRUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --network=none --security=sandbox make all\n",
    ) else {
        panic!("not RUN")
    };
    assert_eq!(run.command, CommandForm::Shell("make all".into()));
    assert_eq!(
        run.mounts,
        vec!["type=cache,target=/c", "type=tmpfs,target=/t"]
    );
    assert_eq!(run.network.as_deref(), Some("none"));
    assert_eq!(run.security.as_deref(), Some("sandbox"));
    let Instruction::Run(run) =
        only_instruction("FROM scratch\nRUN [\"/bin/echo\", \"hi there\"]\n")
    else {
        panic!("not RUN")
    };
    assert_eq!(
        run.command,
        CommandForm::Exec(vec!["/bin/echo".into(), "hi there".into()])
    );
}

#[test]
fn run_heredoc_keeps_line_and_body() {
    let Instruction::Run(run) =
        only_instruction("FROM scratch\nRUN <<EOF\necho one\necho two\nEOF\n")
    else {
        panic!("not RUN")
    };
    assert_eq!(run.command, CommandForm::Shell("<<EOF".into()));
    assert_eq!(
        run.heredocs,
        vec![HereDoc {
            name: "EOF".into(),
            content: "echo one\necho two\n".into(),
            expand: true,
            strip_tabs: false
        }]
    );
    assert_eq!(
        run.sole_heredoc_script().map(|d| d.content.as_str()),
        Some("echo one\necho two\n")
    );
    assert_eq!(
        run.shell_script().as_deref(),
        Some("<<EOF\necho one\necho two\nEOF")
    );
}

#[test]
fn run_heredoc_quoted_and_tab_stripped() {
    let Instruction::Run(run) =
        only_instruction("FROM scratch\nRUN <<-\"END\" sh\n\techo $HOME\nEND\n")
    else {
        panic!("not RUN")
    };
    assert_eq!(run.command, CommandForm::Shell("<<-\"END\" sh".into()));
    assert_eq!(
        run.heredocs,
        vec![HereDoc {
            name: "END".into(),
            content: "echo $HOME\n".into(),
            expand: false,
            strip_tabs: true
        }]
    );
    assert!(run.sole_heredoc_script().is_none());
}

#[test]
fn copy_flags_and_sources() {
    let Instruction::Copy(copy) = only_instruction(
        "FROM scratch\nCOPY --from=build --chown=1:2 --chmod=644 --link --parents --exclude=*.md --exclude=x a b* /dst/\n",
    ) else {
        panic!("not COPY")
    };
    assert_eq!(
        copy.sources,
        vec![CopySource::Path("a".into()), CopySource::Path("b*".into())]
    );
    assert_eq!(copy.dest, "/dst/");
    assert_eq!(copy.from.as_deref(), Some("build"));
    assert_eq!(copy.chown.as_deref(), Some("1:2"));
    assert_eq!(copy.chmod.as_deref(), Some("644"));
    assert!(copy.link);
    assert!(copy.parents);
    assert_eq!(copy.excludes, vec!["*.md", "x"]);
}

#[test]
fn copy_json_form() {
    let Instruction::Copy(copy) = only_instruction("FROM scratch\nCOPY [\"a b\", \"/d e/\"]\n")
    else {
        panic!("not COPY")
    };
    assert_eq!(copy.sources, vec![CopySource::Path("a b".into())]);
    assert_eq!(copy.dest, "/d e/");
}

#[test]
fn copy_heredocs_are_named_after_their_delimiters() {
    let Instruction::Copy(copy) = only_instruction(
        "FROM scratch\nCOPY <<one.txt <<'two.txt' /dst/\nfirst $X\none.txt\nsecond\ntwo.txt\n",
    ) else {
        panic!("not COPY")
    };
    assert_eq!(
        copy.sources,
        vec![
            CopySource::HereDoc(HereDoc {
                name: "one.txt".into(),
                content: "first $X\n".into(),
                expand: true,
                strip_tabs: false
            }),
            CopySource::HereDoc(HereDoc {
                name: "two.txt".into(),
                content: "second\n".into(),
                expand: false,
                strip_tabs: false
            }),
        ]
    );
}

#[test]
fn add_flags() {
    let Instruction::Add(add) = only_instruction(
        "FROM scratch\nADD --checksum=sha256:abc --keep-git-dir=true --unpack=false http://example.invalid/x.tgz /x\n",
    ) else {
        panic!("not ADD")
    };
    assert_eq!(add.checksum.as_deref(), Some("sha256:abc"));
    assert!(add.keep_git_dir);
    assert_eq!(add.unpack, Some(false));
    assert!(!add.parents);
}

#[test]
fn env_label_arg_pairs_stay_unexpanded() {
    assert_eq!(
        only_instruction("FROM scratch\nENV A=1 B=\"two words\" C=$A\n"),
        Instruction::Env(vec![
            ("A".into(), "1".into()),
            ("B".into(), "\"two words\"".into()),
            ("C".into(), "$A".into())
        ])
    );
    assert_eq!(
        only_instruction("FROM scratch\nENV PATH /usr/bin:$PATH\n"),
        Instruction::Env(vec![("PATH".into(), "/usr/bin:$PATH".into())])
    );
    assert_eq!(
        only_instruction("FROM scratch\nLABEL \"com.example.vendor\"=\"ACME Inc\" version=1.0\n"),
        Instruction::Label(vec![
            ("\"com.example.vendor\"".into(), "\"ACME Inc\"".into()),
            ("version".into(), "1.0".into())
        ])
    );
    assert_eq!(
        only_instruction("FROM scratch\nARG user=someuser other\n"),
        Instruction::Arg(vec![
            ArgDecl {
                name: "user".into(),
                default: Some("someuser".into())
            },
            ArgDecl {
                name: "other".into(),
                default: None
            }
        ])
    );
}

#[test]
fn simple_instructions() {
    assert_eq!(
        only_instruction("FROM scratch\nWORKDIR /app/$X\n"),
        Instruction::Workdir("/app/$X".into())
    );
    assert_eq!(
        only_instruction("FROM scratch\nUSER 1000:1000\n"),
        Instruction::User("1000:1000".into())
    );
    assert_eq!(
        only_instruction("FROM scratch\nSTOPSIGNAL SIGTERM\n"),
        Instruction::Stopsignal("SIGTERM".into())
    );
    assert_eq!(
        only_instruction("FROM scratch\nMAINTAINER Jo <jo@x>\n"),
        Instruction::Maintainer("Jo <jo@x>".into())
    );
    assert_eq!(
        only_instruction("FROM scratch\nEXPOSE 80/tcp 53/udp\n"),
        Instruction::Expose(vec!["80/tcp".into(), "53/udp".into()])
    );
    assert_eq!(
        only_instruction("FROM scratch\nVOLUME [\"/a\", \"/b\"]\n"),
        Instruction::Volume(vec!["/a".into(), "/b".into()])
    );
    assert_eq!(
        only_instruction("FROM scratch\nVOLUME /a /b\n"),
        Instruction::Volume(vec!["/a".into(), "/b".into()])
    );
    assert_eq!(
        only_instruction("FROM scratch\nSHELL [\"/bin/bash\", \"-c\"]\n"),
        Instruction::Shell(vec!["/bin/bash".into(), "-c".into()])
    );
    assert_eq!(
        only_instruction("FROM scratch\nCMD [\"a\", \"b\"]\n"),
        Instruction::Cmd(CommandForm::Exec(vec!["a".into(), "b".into()]))
    );
    assert_eq!(
        only_instruction("FROM scratch\nENTRYPOINT exec top -b\n"),
        Instruction::Entrypoint(CommandForm::Shell("exec top -b".into()))
    );
    assert_eq!(
        only_instruction("FROM scratch\nONBUILD COPY . /app\n"),
        Instruction::Onbuild("COPY . /app".into())
    );
}

#[test]
fn healthcheck_options() {
    assert_eq!(
        only_instruction("FROM scratch\nHEALTHCHECK NONE\n"),
        Instruction::Healthcheck(Healthcheck::None)
    );
    assert_eq!(
        only_instruction(
            "FROM scratch\nHEALTHCHECK --interval=5m --timeout=3s --start-period=1.5s --start-interval=100ms --retries=3 CMD curl -f http://localhost/\n"
        ),
        Instruction::Healthcheck(Healthcheck::Cmd {
            test: CommandForm::Shell("curl -f http://localhost/".into()),
            interval: Some(300_000_000_000),
            timeout: Some(3_000_000_000),
            start_period: Some(1_500_000_000),
            start_interval: Some(100_000_000),
            retries: Some(3),
        })
    );
}

#[test]
fn escape_directive_backtick() {
    let d = parse_ok("# escape=`\nFROM scratch\nRUN echo a `\n  b\nCOPY a`b /x\n");
    assert_eq!(d.escape, '`');
    assert_eq!(d.stages[0].instructions[0].source_text, "RUN echo a   b");
}

#[test]
fn unknown_instruction_error_names_location_and_line() {
    let e = err("FROM scratch\nRUN true\nFORM x\n");
    assert_eq!(
        e.location,
        Location {
            file: "Dockerfile".into(),
            line: 3,
            column: 1
        }
    );
    assert!(e.message.contains("FORM"), "{}", e.message);
    assert_eq!(e.source_line, "FORM x");
    assert!(e.to_string().starts_with("Dockerfile:3:1: "), "{e}");
}

#[test]
fn unknown_flag_is_an_error_at_the_flag() {
    let e = err("FROM scratch\nCOPY --foo=x a /b\n");
    assert_eq!((e.location.line, e.location.column), (2, 6));
    assert_eq!(e.message, "unknown flag: foo");
    assert_eq!(e.source_line, "COPY --foo=x a /b");
    let e = err("FROM scratch\nADD --parents a /b\n");
    assert_eq!(e.message, "unknown flag: parents");
    let e = err("FROM --platfrom=x scratch\n");
    assert_eq!(e.message, "unknown flag: platfrom");
}

#[test]
fn bad_flag_values_are_errors() {
    assert_eq!(
        err("FROM scratch\nCOPY --link=yes a /b\n").message,
        "expecting boolean value for flag link, not: yes"
    );
    assert_eq!(
        err("FROM scratch\nCOPY --from a /b\n").message,
        "missing a value on flag: from"
    );
    let e = err("FROM scratch\nHEALTHCHECK --interval=soon CMD true\n");
    assert_eq!((e.location.line, e.location.column), (2, 13));
    assert!(e.message.contains("--interval"), "{}", e.message);
    assert!(
        err("FROM scratch\nHEALTHCHECK --retries=-1 CMD true\n")
            .message
            .contains("retries")
    );
    assert!(
        err("FROM scratch\nHEALTHCHECK --interval=1us CMD true\n")
            .message
            .contains("1ms")
    );
    assert!(
        err("FROM scratch\nHEALTHCHECK --retries=1 NONE\n")
            .message
            .contains("NONE")
    );
}

#[test]
fn instruction_before_from_is_an_error() {
    let e = err("ARG A\nRUN true\nFROM scratch\n");
    assert_eq!((e.location.line, e.location.column), (2, 1));
    assert!(e.message.contains("FROM"), "{}", e.message);
    assert_eq!(e.source_line, "RUN true");
}

#[test]
fn no_from_is_an_error() {
    let e = err("ARG A\n");
    assert!(e.message.contains("FROM"), "{}", e.message);
}

#[test]
fn bad_env_and_stage_names_are_errors() {
    let e = err("FROM scratch\nENV ONLYKEY\n");
    assert_eq!(e.location.line, 2);
    assert_eq!(e.message, "ENV must have two arguments");
    assert!(
        err("FROM scratch\nLABEL a=1 b\n")
            .message
            .contains("can't find =")
    );
    let e = err("FROM scratch AS 1st\n");
    assert!(
        e.message.contains("invalid name for build stage"),
        "{}",
        e.message
    );
    assert!(
        err("FROM scratch AS a\nFROM scratch AS A\n")
            .message
            .contains("duplicate")
    );
}

#[test]
fn unterminated_heredoc_is_an_error() {
    let e = err("FROM scratch\nRUN <<EOF\necho\n");
    assert!(e.message.contains("EOF"), "{}", e.message);
}

#[test]
fn run_heredoc_after_the_command() {
    let d = parse_ok("FROM scratch\nRUN cat <<EOF > /greeting\nhello $NAME\nEOF\nRUN true\n");
    let instructions = &d.stages[0].instructions;
    assert_eq!(instructions.len(), 2);
    let Instruction::Run(run) = &instructions[0].instruction else {
        panic!("not RUN")
    };
    assert_eq!(
        run.command,
        CommandForm::Shell("cat <<EOF > /greeting".into())
    );
    assert_eq!(
        run.heredocs,
        vec![HereDoc {
            name: "EOF".into(),
            content: "hello $NAME\n".into(),
            expand: true,
            strip_tabs: false
        }]
    );
    assert_eq!(
        run.shell_script().as_deref(),
        Some("cat <<EOF > /greeting\nhello $NAME\nEOF")
    );
    assert_eq!(instructions[1].location.line, 5);
}

#[test]
fn run_with_two_heredocs() {
    let Instruction::Run(run) =
        only_instruction("FROM scratch\nRUN <<A <<'B'\necho a\nA\necho $b\nB\n")
    else {
        panic!("not RUN")
    };
    assert_eq!(run.command, CommandForm::Shell("<<A <<'B'".into()));
    let names: Vec<(&str, &str, bool)> = run
        .heredocs
        .iter()
        .map(|d| (d.name.as_str(), d.content.as_str(), d.expand))
        .collect();
    assert_eq!(
        names,
        vec![("A", "echo a\n", true), ("B", "echo $b\n", false)]
    );
}

#[test]
fn unterminated_heredoc_after_command_is_an_error() {
    let e = err("FROM scratch\nRUN cat <<EOF\nhello\n");
    assert_eq!(e.location.line, 2);
    assert!(e.message.contains("EOF"), "{}", e.message);
    assert_eq!(e.source_line, "RUN cat <<EOF");
}

#[test]
fn line_continuations_are_joined_like_docker() {
    let d = parse_ok(
        "FROM scratch\nRUN echo a \\\n    b \\\n# comment\n  c\nCMD echo x \\\n  y\nENV A=1 \\\n  B=2\nWORKDIR /a\\\nb\n",
    );
    let instructions: Vec<&Instruction> = d.stages[0]
        .instructions
        .iter()
        .map(|i| &i.instruction)
        .collect();
    assert_eq!(
        instructions,
        vec![
            &Instruction::Run(RunInstr {
                command: CommandForm::Shell("echo a     b   c".into()),
                heredocs: vec![],
                mounts: vec![],
                network: None,
                security: None
            }),
            &Instruction::Cmd(CommandForm::Shell("echo x   y".into())),
            &Instruction::Env(vec![("A".into(), "1".into()), ("B".into(), "2".into())]),
            &Instruction::Workdir("/ab".into()),
        ]
    );
    assert_eq!(
        d.stages[0].instructions[0].source_text,
        "RUN echo a     b   c"
    );
}

#[test]
fn realistic_multistage_fixture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/dockerfile/multistage.Dockerfile"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let d = parse(&text, "multistage.Dockerfile").unwrap();
    assert_eq!(d.global_args.len(), 2);
    assert_eq!(d.stages.len(), 2);
    let build = &d.stages[0];
    assert_eq!(build.name.as_deref(), Some("build-env"));
    assert_eq!(build.base, "${BASE}");
    assert_eq!(build.location.line, 7);
    let kinds: Vec<&str> = build
        .instructions
        .iter()
        .map(|i| match &i.instruction {
            Instruction::Arg(_) => "ARG",
            Instruction::Env(_) => "ENV",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::Copy(_) => "COPY",
            Instruction::Run(_) => "RUN",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, vec!["ARG", "ENV", "WORKDIR", "COPY", "COPY", "RUN"]);
    assert_eq!(
        build.instructions[1].instruction,
        Instruction::Env(vec![
            ("CGO_ENABLED".into(), "0".into()),
            ("GOFLAGS".into(), "\"-mod=vendor -trimpath\"".into())
        ])
    );
    let Instruction::Copy(copy) = &build.instructions[3].instruction else {
        panic!()
    };
    assert_eq!(copy.excludes, vec!["*_test.go"]);
    assert_eq!(copy.dest, "./");
    let Instruction::Run(run) = &build.instructions[5].instruction else {
        panic!()
    };
    assert_eq!(run.network.as_deref(), Some("none"));
    assert_eq!(
        run.command,
        CommandForm::Shell("echo building &&     echo done".into())
    );
    assert_eq!(build.instructions[5].location.line, 15);

    let app = &d.stages[1];
    assert!(app.name.is_none());
    let Instruction::Copy(conf) = &app.instructions[2].instruction else {
        panic!()
    };
    assert_eq!(conf.from, None);
    assert_eq!(
        conf.sources,
        vec![CopySource::HereDoc(HereDoc {
            name: "EOF".into(),
            content: "listen=:8080\n".into(),
            expand: true,
            strip_tabs: true
        })]
    );
    let Instruction::Copy(bin) = &app.instructions[1].instruction else {
        panic!()
    };
    assert_eq!(
        (bin.from.as_deref(), bin.chmod.as_deref()),
        (Some("build-env"), Some("0755"))
    );
    let onbuild = app.instructions.iter().find_map(|i| match &i.instruction {
        Instruction::Onbuild(trigger) => Some(trigger.as_str()),
        _ => None,
    });
    assert_eq!(onbuild, Some("RUN echo child     build"));
    assert_eq!(
        app.instructions.last().unwrap().instruction,
        Instruction::Cmd(CommandForm::Exec(vec!["serve".into()]))
    );
}

#[test]
fn forbidden_onbuild_triggers_and_empty_run_are_errors() {
    let e = err("FROM scratch\nONBUILD FROM x\n");
    assert_eq!((e.location.line, e.location.column), (2, 1));
    assert_eq!(e.message, "FROM isn't allowed as an ONBUILD trigger");
    assert_eq!(
        err("FROM scratch\nONBUILD MAINTAINER me\n").message,
        "MAINTAINER isn't allowed as an ONBUILD trigger"
    );
    assert!(
        err("FROM scratch\nONBUILD ONBUILD RUN x\n")
            .message
            .contains("ONBUILD")
    );
    assert_eq!(
        err("FROM scratch\nRUN\n").message,
        "RUN requires at least one argument"
    );
}

#[test]
fn bad_chmod_network_and_security_values_are_errors() {
    let e = err("FROM scratch\nCOPY --chmod=abc a /b\n");
    assert_eq!((e.location.line, e.location.column), (2, 6));
    assert!(e.message.contains("--chmod"), "{}", e.message);
    assert!(
        err("FROM scratch\nADD --chmod=999 a /b\n")
            .message
            .contains("--chmod")
    );
    assert!(
        parse("FROM scratch\nCOPY --chmod=$MODE a /b\n", "Dockerfile").is_ok(),
        "checked after expansion"
    );
    assert!(
        err("FROM scratch\nRUN --network=bridge true\n")
            .message
            .contains("--network")
    );
    assert!(
        err("FROM scratch\nRUN --security=root true\n")
            .message
            .contains("--security")
    );
}

/// ENV/LABEL parsing plus expansion, applied the way the executor must (each line expanded with the
/// environment before it), against what a real `docker build` (BuildKit, Docker 20.10) stored.
#[test]
fn env_and_label_values_match_docker_buildkit() {
    let text = r#"FROM scratch
ARG A=x
ENV B="hello world" C=${A:-z}'q' D=\$A E='$A' F="a\"b" G=a\ b
ENV legacy  some value "q" \$A
ENV A=1 H=$A
LABEL "k k"="v v" k2=$A k3="${NOPE:-d e}"
"#;
    let d = parse_ok(text);
    let lexer = Lexer::new(d.escape);
    let mut env: Vec<(String, String)> = Vec::new();
    let mut labels: Vec<(String, String)> = Vec::new();
    let lookup_in = |env: &Vec<(String, String)>, name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    for located in &d.stages[0].instructions {
        let before = env.clone();
        let lookup = |name: &str| lookup_in(&before, name);
        let expand = |word: &str| lexer.process_word(word, &lookup).unwrap();
        match &located.instruction {
            Instruction::Arg(decls) => {
                for decl in decls {
                    env.push((
                        decl.name.clone(),
                        expand(decl.default.as_deref().unwrap_or("")),
                    ));
                }
            }
            Instruction::Env(pairs) => {
                env.extend(pairs.iter().map(|(k, v)| (expand(k), expand(v))))
            }
            Instruction::Label(pairs) => {
                labels.extend(pairs.iter().map(|(k, v)| (expand(k), expand(v))))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let final_env: Vec<String> = env
        .iter()
        .skip(1)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(
        final_env,
        vec![
            "B=hello world",
            "C=xq",
            "D=$A",
            "E=$A",
            "F=a\"b",
            "G=a b",
            "legacy=some value q $A",
            "A=1",
            "H=x"
        ]
    );
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(labels, vec!["k k=v v", "k2=1", "k3=d e"]);
}

/// WORKDIR/EXPOSE/VOLUME/USER/STOPSIGNAL values expanded as the executor must, against what a real
/// `docker build` (BuildKit, Docker 20.10) stored in the image config.
#[test]
fn other_expanded_values_match_docker_buildkit() {
    let text = r#"FROM scratch
WORKDIR "/a b/$D"
EXPOSE 80 "8080/udp" ${P}/tcp
VOLUME ["/v1", "/$D"]
VOLUME /x/$D /y
USER "$P":'0'
STOPSIGNAL "SIG$S"
"#;
    let d = parse_ok(text);
    let lexer = Lexer::new(d.escape);
    let vars = [("P", "9000"), ("D", "data"), ("S", "TERM")];
    let lookup = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let word = |w: &str| lexer.process_word(w, &lookup).unwrap();
    let mut seen = Vec::new();
    for located in &d.stages[0].instructions {
        match &located.instruction {
            Instruction::Workdir(w) => seen.push(format!("WORKDIR {}", word(w))),
            Instruction::Expose(ports) => {
                for port in ports {
                    for p in lexer.process_words(port, &lookup).unwrap() {
                        seen.push(format!("EXPOSE {p}"));
                    }
                }
            }
            Instruction::Volume(paths) => {
                seen.extend(paths.iter().map(|p| format!("VOLUME {}", word(p))))
            }
            Instruction::User(u) => seen.push(format!("USER {}", word(u))),
            Instruction::Stopsignal(s) => seen.push(format!("STOPSIGNAL {}", word(s))),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            "WORKDIR /a b/data",
            "EXPOSE 80",
            "EXPOSE 8080/udp",
            "EXPOSE 9000/tcp",
            "VOLUME /v1",
            "VOLUME /data",
            "VOLUME /x/data",
            "VOLUME /y",
            "USER 9000:0",
            "STOPSIGNAL SIGTERM"
        ]
    );
}
