//! Converts the `parse-dockerfile` syntax tree into the typed [`Dockerfile`] model: validates flags,
//! splits `ENV`/`LABEL`/`ARG` pairs, names here-documents, and reports errors with `file:line:column`.

use parse_dockerfile as syntax;

use super::duration::parse_go_duration;
use super::error::{DockerfileError, line_column};
use super::flags::{
    FlagError, FlagKind, Flags, RawFlag, is_valid_chmod, is_valid_network, is_valid_security,
};
use super::heredoc::complete_run_heredocs;
use super::model::*;
use super::words::{split_arg_decls, split_name_values};

const FROM_FLAGS: &[(&str, FlagKind)] = &[("platform", FlagKind::Single)];
const RUN_FLAGS: &[(&str, FlagKind)] = &[
    ("mount", FlagKind::Repeated),
    ("network", FlagKind::Single),
    ("security", FlagKind::Single),
];
const COPY_FLAGS: &[(&str, FlagKind)] = &[
    ("from", FlagKind::Single),
    ("chown", FlagKind::Single),
    ("chmod", FlagKind::Single),
    ("link", FlagKind::Bool),
    ("parents", FlagKind::Bool),
    ("exclude", FlagKind::Repeated),
];
const ADD_FLAGS: &[(&str, FlagKind)] = &[
    ("chown", FlagKind::Single),
    ("chmod", FlagKind::Single),
    ("link", FlagKind::Bool),
    ("exclude", FlagKind::Repeated),
    ("checksum", FlagKind::Single),
    ("keep-git-dir", FlagKind::Bool),
    ("unpack", FlagKind::Bool),
];
const HEALTHCHECK_FLAGS: &[(&str, FlagKind)] = &[
    ("interval", FlagKind::Single),
    ("timeout", FlagKind::Single),
    ("start-period", FlagKind::Single),
    ("start-interval", FlagKind::Single),
    ("retries", FlagKind::Single),
];

/// Parses Dockerfile `text`; `file_label` names the file in error locations (e.g. `Dockerfile`).
pub fn parse(text: &str, file_label: &str) -> Result<Dockerfile, DockerfileError> {
    let completed = complete_run_heredocs(text, file_label)?;
    let original = text;
    let text = completed.text.as_str();
    let tree = syntax::parse(text).map_err(|e| syntax_error(original, file_label, &e))?;
    let escape = tree
        .parser_directives
        .escape
        .as_ref()
        .map_or('\\', |d| d.value.value);
    let converter = Converter {
        text,
        file: file_label,
        escape,
        starts: instruction_starts(&tree.instructions),
        original,
        extra_heredocs: completed.extra,
    };

    let global_args = tree
        .global_args()
        .map(|arg| converter.arg_decls(arg))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();

    let mut stages = Vec::new();
    for (index, stage) in tree.stages().enumerate() {
        let stage = converter.stage(index, &stage)?;
        // Names are case-insensitive: `AS a` and `AS A` clash even though the crate sees two names.
        if let Some(name) = &stage.name
            && stages.iter().any(|s: &Stage| s.name.as_ref() == Some(name))
        {
            let at = &stage.location;
            return Err(DockerfileError::at(
                file_label,
                original,
                at.line,
                at.column,
                format!("duplicate stage name {name:?}"),
            ));
        }
        stages.push(stage);
    }
    Ok(Dockerfile {
        escape,
        global_args,
        stages,
    })
}

fn syntax_error(text: &str, file: &str, error: &syntax::Error) -> DockerfileError {
    let message = format!("{error:#}");
    let message = match message.as_str() {
        "expected FROM" => {
            "no build stage in current context: only ARG may come before the first FROM".to_string()
        }
        "expected at least one FROM instruction" => {
            "the Dockerfile has no FROM instruction".to_string()
        }
        _ => message,
    };
    DockerfileError::at(file, text, error.line(), error.column(), message)
}

/// Byte offsets where each top-level instruction starts, in order.
fn instruction_starts(instructions: &[syntax::Instruction<'_>]) -> Vec<usize> {
    let mut starts: Vec<usize> = instructions.iter().map(|i| keyword_span(i).start).collect();
    starts.sort_unstable();
    starts
}

fn keyword_span(instruction: &syntax::Instruction<'_>) -> syntax::Span {
    use syntax::Instruction as I;
    match instruction {
        I::Add(i) => i.add.span.clone(),
        I::Arg(i) => i.arg.span.clone(),
        I::Cmd(i) => i.cmd.span.clone(),
        I::Copy(i) => i.copy.span.clone(),
        I::Entrypoint(i) => i.entrypoint.span.clone(),
        I::Env(i) => i.env.span.clone(),
        I::Expose(i) => i.expose.span.clone(),
        I::From(i) => i.from.span.clone(),
        I::Healthcheck(i) => i.healthcheck.span.clone(),
        I::Label(i) => i.label.span.clone(),
        I::Maintainer(i) => i.maintainer.span.clone(),
        I::Onbuild(i) => i.onbuild.span.clone(),
        I::Run(i) => i.run.span.clone(),
        I::Shell(i) => i.shell.span.clone(),
        I::Stopsignal(i) => i.stopsignal.span.clone(),
        I::User(i) => i.user.span.clone(),
        I::Volume(i) => i.volume.span.clone(),
        I::Workdir(i) => i.workdir.span.clone(),
        _ => 0..0,
    }
}

struct Converter<'t> {
    /// The text the crate parsed (extra RUN here-document bodies blanked out).
    text: &'t str,
    /// The Dockerfile as written, for the source lines shown with errors.
    original: &'t str,
    /// RUN here-documents the crate did not read, by the RUN's line.
    extra_heredocs: std::collections::HashMap<usize, Vec<HereDoc>>,
    file: &'t str,
    escape: char,
    starts: Vec<usize>,
}

impl Converter<'_> {
    fn error_at(&self, offset: usize, message: impl Into<String>) -> DockerfileError {
        let (line, column) = line_column(self.text, offset);
        DockerfileError::at(self.file, self.original, line, column, message)
    }

    fn location(&self, offset: usize) -> Location {
        let (line, column) = line_column(self.text, offset);
        Location {
            file: self.file.to_string(),
            line,
            column,
        }
    }

    /// The instruction text starting at `start`: up to the next instruction, without trailing blank and
    /// comment lines, with line continuations joined as Docker does (escape + newline removed).
    fn source_text(&self, start: usize) -> String {
        let end = self
            .starts
            .iter()
            .copied()
            .find(|s| *s > start)
            .unwrap_or(self.text.len());
        let raw = self.text.get(start..end).unwrap_or_default();
        let mut lines: Vec<&str> = raw.lines().collect();
        while lines
            .last()
            .is_some_and(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            lines.pop();
        }
        join_continuations(&lines.join("\n"), self.escape)
    }

    fn flags(
        &self,
        raw: &[syntax::Flag<'_>],
        allowed: &[(&'static str, FlagKind)],
    ) -> Result<Flags, DockerfileError> {
        let raw: Vec<RawFlag<'_>> = raw
            .iter()
            .map(|f| RawFlag {
                name: &f.name.value,
                value: f.value.as_ref().map(|v| &*v.value),
                offset: f.flag_span().start,
            })
            .collect();
        Flags::validate(&raw, allowed)
            .map_err(|FlagError { offset, message }| self.error_at(offset, message))
    }

    /// Turns a flag check into a located error.
    fn check(&self, result: Result<(), FlagError>) -> Result<(), DockerfileError> {
        result.map_err(|FlagError { offset, message }| self.error_at(offset, message))
    }

    fn arg_decls(&self, arg: &syntax::ArgInstruction<'_>) -> Result<Vec<ArgDecl>, DockerfileError> {
        let decls = split_arg_decls(&arg.arguments.value, self.escape)
            .map_err(|e| self.error_at(arg.arg.span.start, e.to_string()))?;
        Ok(decls
            .into_iter()
            .map(|(name, default)| ArgDecl { name, default })
            .collect())
    }

    fn stage(&self, index: usize, stage: &syntax::Stage<'_, '_>) -> Result<Stage, DockerfileError> {
        let from = stage.from;
        let flags = self.flags(&from.options, FROM_FLAGS)?;
        let name = match &from.as_ {
            Some((_, name)) => {
                let lowered = name.value.to_ascii_lowercase();
                if !is_valid_stage_name(&lowered) {
                    return Err(self.error_at(
                        name.span.start,
                        format!(
                            "invalid name for build stage: {:?}, name can't start with a number or contain symbols",
                            name.value
                        ),
                    ));
                }
                Some(lowered)
            }
            None => None,
        };
        let mut instructions = Vec::with_capacity(stage.instructions.len());
        for instruction in stage.instructions {
            let start = keyword_span(instruction).start;
            instructions.push(Located {
                location: self.location(start),
                instruction: self.instruction(instruction)?,
                source_text: self.source_text(start),
            });
        }
        Ok(Stage {
            index,
            name,
            base: from.image.value.to_string(),
            platform: flags.single("platform"),
            location: self.location(from.from.span.start),
            instructions,
        })
    }

    fn instruction(
        &self,
        instruction: &syntax::Instruction<'_>,
    ) -> Result<Instruction, DockerfileError> {
        use syntax::Instruction as I;
        let start = keyword_span(instruction).start;
        Ok(match instruction {
            I::Run(run) => Instruction::Run(self.run(run)?),
            I::Copy(copy) => {
                let flags = self.flags(&copy.options, COPY_FLAGS)?;
                self.check(flags.check_value(
                    "chmod",
                    is_valid_chmod,
                    "an octal mode like 0755, or u+x",
                ))?;
                let sources = self.copy_sources(&copy.copy, &copy.src);
                Instruction::Copy(copy_instr(sources, &copy.dest.value, &flags))
            }
            I::Add(add) => {
                let flags = self.flags(&add.options, ADD_FLAGS)?;
                self.check(flags.check_value(
                    "chmod",
                    is_valid_chmod,
                    "an octal mode like 0755, or u+x",
                ))?;
                let sources = self.copy_sources(&add.add, &add.src);
                Instruction::Add(copy_instr(sources, &add.dest.value, &flags))
            }
            I::Env(env) => Instruction::Env(
                split_name_values(&env.arguments.value, self.escape, "ENV")
                    .map_err(|e| self.error_at(start, e.to_string()))?,
            ),
            I::Label(label) => Instruction::Label(
                split_name_values(&label.arguments.value, self.escape, "LABEL")
                    .map_err(|e| self.error_at(start, e.to_string()))?,
            ),
            I::Arg(arg) => Instruction::Arg(self.arg_decls(arg)?),
            I::Workdir(w) => Instruction::Workdir(w.arguments.value.to_string()),
            I::User(u) => Instruction::User(u.arguments.value.to_string()),
            I::Stopsignal(s) => Instruction::Stopsignal(s.arguments.value.to_string()),
            I::Maintainer(m) => Instruction::Maintainer(m.name.value.to_string()),
            I::Expose(e) => {
                Instruction::Expose(e.arguments.iter().map(|a| a.value.to_string()).collect())
            }
            I::Volume(v) => Instruction::Volume(match &v.arguments {
                syntax::JsonOrStringArray::Json(list) => {
                    list.value.iter().map(|a| a.value.to_string()).collect()
                }
                syntax::JsonOrStringArray::String(list) => {
                    list.iter().map(|a| a.value.to_string()).collect()
                }
            }),
            I::Cmd(c) => Instruction::Cmd(command_form(&c.arguments, self.escape)),
            I::Entrypoint(e) => Instruction::Entrypoint(command_form(&e.arguments, self.escape)),
            I::Shell(s) => {
                Instruction::Shell(s.arguments.iter().map(|a| a.value.to_string()).collect())
            }
            I::Healthcheck(h) => Instruction::Healthcheck(self.healthcheck(h)?),
            I::Onbuild(o) => {
                let forbidden = match &*o.instruction {
                    I::From(_) => Some("FROM"),
                    I::Maintainer(_) => Some("MAINTAINER"),
                    _ => None,
                };
                if let Some(name) = forbidden {
                    return Err(
                        self.error_at(start, format!("{name} isn't allowed as an ONBUILD trigger"))
                    );
                }
                let text = self.source_text(start);
                let keyword_len = o.onbuild.span.len();
                Instruction::Onbuild(
                    text.get(keyword_len..)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                )
            }
            I::From(_) => return Err(self.error_at(start, "unexpected FROM inside a stage")),
            _ => return Err(self.error_at(start, "unsupported instruction")),
        })
    }

    fn run(&self, run: &syntax::RunInstruction<'_>) -> Result<RunInstr, DockerfileError> {
        let flags = self.flags(&run.options, RUN_FLAGS)?;
        self.check(flags.check_value("network", is_valid_network, "default, none or host"))?;
        self.check(flags.check_value("security", is_valid_security, "sandbox or insecure"))?;
        let (command, mut heredocs) = if run.here_docs.is_empty() {
            (command_form(&run.arguments, self.escape), Vec::new())
        } else {
            // The crate puts only the text after the delimiter in `arguments`; rebuild the whole first line.
            let after_keyword = run.run.span.end;
            let first_body_start = run.here_docs[0].span.start;
            let head = self
                .text
                .get(after_keyword..first_body_start)
                .unwrap_or_default();
            let line = head.find("<<").map_or(head, |i| &head[i..]).trim_end();
            let heredocs = self.name_heredocs(line, run.here_docs.iter());
            (CommandForm::Shell(line.to_string()), heredocs)
        };
        let line = line_column(self.text, run.run.span.start).0;
        if let Some(extra) = self.extra_heredocs.get(&line) {
            heredocs.extend(extra.iter().cloned());
        }
        if heredocs.is_empty()
            && matches!(&command, CommandForm::Shell(line) if line.trim().is_empty())
        {
            return Err(self.error_at(run.run.span.start, "RUN requires at least one argument"));
        }
        Ok(RunInstr {
            command,
            heredocs,
            mounts: flags.repeated("mount"),
            network: flags.single("network"),
            security: flags.single("security"),
        })
    }

    fn copy_sources(
        &self,
        keyword: &syntax::Keyword,
        sources: &[syntax::Source<'_>],
    ) -> Vec<CopySource> {
        let docs: Vec<&syntax::HereDoc<'_>> = sources
            .iter()
            .filter_map(|s| match s {
                syntax::Source::HereDoc(doc) => Some(doc),
                _ => None,
            })
            .collect();
        let mut named = match docs.first() {
            Some(first) => {
                let head = self
                    .text
                    .get(keyword.span.end..first.span.start)
                    .unwrap_or_default();
                self.name_heredocs(head, docs.iter().copied()).into_iter()
            }
            None => Vec::new().into_iter(),
        };
        sources
            .iter()
            .filter_map(|s| match s {
                syntax::Source::Path(p) => Some(CopySource::Path(p.value.to_string())),
                syntax::Source::HereDoc(_) => named.next().map(CopySource::HereDoc),
                _ => None,
            })
            .collect()
    }

    /// Pairs here-doc bodies with the `<<NAME` words of the instruction line `head`, in order.
    fn name_heredocs<'d>(
        &self,
        head: &str,
        docs: impl Iterator<Item = &'d syntax::HereDoc<'d>>,
    ) -> Vec<HereDoc> {
        let mut words = head.split_whitespace().filter_map(heredoc_word);
        docs.map(|doc| {
            let (name, strip_tabs) = words.next().unwrap_or_default();
            HereDoc {
                name,
                content: doc.value.to_string(),
                expand: doc.expand,
                strip_tabs,
            }
        })
        .collect()
    }

    fn healthcheck(
        &self,
        h: &syntax::HealthcheckInstruction<'_>,
    ) -> Result<Healthcheck, DockerfileError> {
        let flags = self.flags(&h.options, HEALTHCHECK_FLAGS)?;
        let flag_offset = |name: &str| {
            h.options
                .iter()
                .find(|f| f.name.value == name)
                .map_or(h.healthcheck.span.start, |f| f.flag_span().start)
        };
        match &h.arguments {
            syntax::HealthcheckArguments::None { .. } => {
                if let Some(first) = h.options.first() {
                    return Err(
                        self.error_at(first.flag_span().start, "HEALTHCHECK NONE takes no options")
                    );
                }
                Ok(Healthcheck::None)
            }
            syntax::HealthcheckArguments::Cmd { arguments, .. } => {
                let duration = |name: &str| -> Result<Option<u64>, DockerfileError> {
                    let Some(value) = flags.single(name) else {
                        return Ok(None);
                    };
                    let nanos = parse_go_duration(&value).ok_or_else(|| {
                        self.error_at(
                            flag_offset(name),
                            format!("invalid duration {value:?} for --{name}"),
                        )
                    })?;
                    if nanos != 0 && nanos < 1_000_000 {
                        return Err(self.error_at(
                            flag_offset(name),
                            format!("Interval {name} cannot be less than 1ms"),
                        ));
                    }
                    Ok(Some(nanos))
                };
                let retries = match flags.single("retries") {
                    None => None,
                    Some(value) => Some(value.parse::<u32>().map_err(|_| {
                        self.error_at(
                            flag_offset("retries"),
                            format!("--retries must be a non-negative integer, not {value:?}"),
                        )
                    })?),
                };
                Ok(Healthcheck::Cmd {
                    test: command_form(arguments, self.escape),
                    interval: duration("interval")?,
                    timeout: duration("timeout")?,
                    start_period: duration("start-period")?,
                    start_interval: duration("start-interval")?,
                    retries,
                })
            }
            _ => Err(self.error_at(h.healthcheck.span.start, "unsupported HEALTHCHECK form")),
        }
    }
}

/// Joins continuation lines as Docker does: an escape character ending a line is removed together with
/// the newline, and comment lines inside the continuation are dropped; other newlines (here-document
/// bodies) stay.
fn join_continuations(raw: &str, escape: char) -> String {
    let mut joined = String::new();
    let mut continued = false;
    for line in raw.lines() {
        if continued && line.trim_start().starts_with('#') {
            continue;
        }
        if !continued && !joined.is_empty() {
            joined.push('\n');
        }
        match line.trim_end().strip_suffix(escape) {
            Some(head) => {
                joined.push_str(head);
                continued = true;
            }
            None => {
                joined.push_str(line);
                continued = false;
            }
        }
    }
    joined.trim_end().to_string()
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"` -> (name without quotes, strip_tabs).
fn heredoc_word(word: &str) -> Option<(String, bool)> {
    let rest = word.strip_prefix("<<")?;
    let (rest, strip_tabs) = match rest.strip_prefix('-') {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let name: String = rest
        .chars()
        .filter(|c| !matches!(c, '"' | '\'' | '\\'))
        .collect();
    (!name.is_empty()).then_some((name, strip_tabs))
}

fn command_form(command: &syntax::Command<'_>, escape: char) -> CommandForm {
    match command {
        syntax::Command::Exec(list) => {
            CommandForm::Exec(list.value.iter().map(|a| a.value.to_string()).collect())
        }
        syntax::Command::Shell(text) => CommandForm::Shell(join_continuations(text.value, escape)),
        _ => CommandForm::Shell(String::new()),
    }
}

fn copy_instr(sources: Vec<CopySource>, dest: &str, flags: &Flags) -> CopyInstr {
    CopyInstr {
        sources,
        dest: dest.to_string(),
        from: flags.single("from"),
        chown: flags.single("chown"),
        chmod: flags.single("chmod"),
        link: flags.bool("link").unwrap_or(false),
        excludes: flags.repeated("exclude"),
        parents: flags.bool("parents").unwrap_or(false),
        checksum: flags.single("checksum"),
        keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
        unpack: flags.bool("unpack"),
    }
}

/// Docker's stage-name rule: `^[a-z][a-z0-9-_.]*$` (after lowercasing).
fn is_valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}
