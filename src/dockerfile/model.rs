//! The typed Dockerfile model produced by [`super::parse`]: stages, instructions and their locations.
//!
//! Values are kept UNEXPANDED (quotes and `$VAR` references intact). The build executor expands them at
//! build time with [`super::expand::Lexer`], using the environment in force *before* the instruction
//! (so in `ENV A=1 B=$A`, `B` sees the previous `A`, as Docker does).
//!
//! Instructions whose arguments the executor must expand (as Docker does): `ADD`, `COPY` (sources, dest,
//! `--chown`, `--chmod`, `--from`), `ENV` (keys and values), `EXPOSE`, `FROM` (image, with global ARGs
//! only; `--platform` too), `LABEL` (keys and values), `STOPSIGNAL`, `USER`, `VOLUME`, `WORKDIR`,
//! `ONBUILD` (its trigger is stored raw: expand it when it runs in the child build, like any instruction of
//! its kind), and `ARG` defaults. `RUN`, `CMD`, `ENTRYPOINT`, `SHELL` and `HEALTHCHECK` are NOT expanded: the shell does it
//! at run time. `RUN --mount`/`--network` values are expanded too by BuildKit.
//! `COPY`/`ADD` here-documents are expanded only when `HereDoc::expand` is true (the delimiter was not
//! quoted), with [`super::expand::Lexer::for_heredoc`] (quotes kept); `RUN` here-documents are left to
//! the shell.
//!
//! ARG rules (Docker's): global ARGs (before the first FROM) are visible only to FROM lines; inside a
//! stage, `ARG NAME` without a default takes the global ARG's value, and `--build-arg` values override
//! defaults. An ARG value is usable by later instructions of its stage (and is in RUN's environment),
//! but an ENV of the same name wins over it.

use std::fmt;

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    /// The escape character (`\` unless `# escape=` says otherwise).
    pub escape: char,
    /// `ARG`s declared before the first `FROM` (usable in `FROM` lines, and re-declarable in stages).
    pub global_args: Vec<ArgDecl>,
    /// The build stages in file order; at least one.
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// Finds a stage by name (case-insensitive, as Docker) or by its index written as a number.
    pub fn stage(&self, name_or_index: &str) -> Option<&Stage> {
        let lowered = name_or_index.to_ascii_lowercase();
        if let Some(stage) = self
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lowered.as_str()))
        {
            return Some(stage);
        }
        name_or_index
            .parse::<usize>()
            .ok()
            .and_then(|i| self.stages.get(i))
    }
}

/// One `FROM` and the instructions up to the next `FROM`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Position of the stage in the file, from 0.
    pub index: usize,
    /// The `AS name`, lowercased like Docker.
    pub name: Option<String>,
    /// The `FROM` image, unexpanded (may name an earlier stage, or `scratch`).
    pub base: String,
    /// The `--platform` flag value, unexpanded.
    pub platform: Option<String>,
    /// Where the `FROM` is.
    pub location: Location,
    /// The instructions after `FROM`, in order.
    pub instructions: Vec<Located>,
}

/// An instruction and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub location: Location,
    pub instruction: Instruction,
    /// The instruction's original text (continuation lines joined as written), for history `created_by`.
    pub source_text: String,
}

/// A position in a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One `ARG` name with its optional default (unexpanded, quotes kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

/// Exec form (`["a", "b"]`) or shell form (`a b`) of RUN/CMD/ENTRYPOINT/HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    Exec(Vec<String>),
    Shell(String),
}

/// A typed Dockerfile instruction (FROM is represented by [`Stage`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Instruction {
    Run(RunInstr),
    Copy(CopyInstr),
    Add(CopyInstr),
    /// `(key, value)` pairs, unexpanded; from `ENV k=v k2="v 2"` or legacy `ENV k v w`.
    Env(Vec<(String, String)>),
    Arg(Vec<ArgDecl>),
    /// `(key, value)` pairs, unexpanded.
    Label(Vec<(String, String)>),
    Workdir(String),
    User(String),
    /// Port specs, unexpanded (expand then split into words).
    Expose(Vec<String>),
    /// Paths, unexpanded.
    Volume(Vec<String>),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    Shell(Vec<String>),
    Stopsignal(String),
    Healthcheck(Healthcheck),
    /// The trigger instruction's raw text, e.g. `COPY . /app`.
    Onbuild(String),
    Maintainer(String),
}

/// `RUN [flags] command`.
///
/// With a here-document (`RUN <<EOF`), `command` is `Shell` of the rest of the first line as written
/// (e.g. `<<EOF` or `<<EOF bash`) and `heredocs` holds the body. BuildKit semantics for the executor:
/// when the line is just the here-doc word, the body is the script (run with the shell, or directly when
/// it starts with `#!`); otherwise [`RunInstr::shell_script`] gives the text to hand to the shell.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInstr {
    pub command: CommandForm,
    pub heredocs: Vec<HereDoc>,
    /// Raw `--mount` values, in order.
    pub mounts: Vec<String>,
    /// `--network` value (`default`, `none`, `host`).
    pub network: Option<String>,
    /// `--security` value (`sandbox`, `insecure`).
    pub security: Option<String>,
}

impl RunInstr {
    /// The body of the here-document when the command line is nothing but that here-doc word
    /// (`RUN <<EOF`), i.e. the script BuildKit runs on its own.
    pub fn sole_heredoc_script(&self) -> Option<&HereDoc> {
        match (&self.command, self.heredocs.as_slice()) {
            (CommandForm::Shell(line), [doc]) if is_heredoc_word(line.trim(), &doc.name) => {
                Some(doc)
            }
            _ => None,
        }
    }

    /// The full text to pass to `sh -c`: the command line, then each here-doc body and its delimiter,
    /// as a POSIX shell reads here-documents. For exec form or no here-docs, the command line alone.
    pub fn shell_script(&self) -> Option<String> {
        let CommandForm::Shell(line) = &self.command else {
            return None;
        };
        let mut script = line.clone();
        for doc in &self.heredocs {
            script.push('\n');
            script.push_str(&doc.content);
            if !doc.content.is_empty() && !doc.content.ends_with('\n') {
                script.push('\n');
            }
            script.push_str(&doc.name);
        }
        Some(script)
    }
}

fn is_heredoc_word(word: &str, name: &str) -> bool {
    let Some(rest) = word.strip_prefix("<<") else {
        return false;
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    rest.replace(['"', '\''], "") == name
}

/// The shared arguments of `COPY` and `ADD`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CopyInstr {
    pub sources: Vec<CopySource>,
    pub dest: String,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    /// `--exclude` patterns, in order.
    pub excludes: Vec<String>,
    pub parents: bool,
    /// `ADD --checksum`.
    pub checksum: Option<String>,
    /// `ADD --keep-git-dir`.
    pub keep_git_dir: bool,
    /// `ADD --unpack` (None: default behaviour, unpack local archives only).
    pub unpack: Option<bool>,
}

/// A `COPY`/`ADD` source: a path/URL/glob (unexpanded) or an inline here-document.
#[derive(Debug, Clone, PartialEq)]
pub enum CopySource {
    Path(String),
    HereDoc(HereDoc),
}

/// A here-document body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HereDoc {
    /// The delimiter word without quotes; `COPY` uses it as the file name.
    pub name: String,
    /// The body, each line ending with `\n` (leading tabs already removed when `strip_tabs`).
    pub content: String,
    /// Whether `$VAR`s in the body are expanded (the delimiter was not quoted).
    pub expand: bool,
    /// Whether it was written `<<-` (leading tabs stripped).
    pub strip_tabs: bool,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [options] CMD command`.
#[derive(Debug, Clone, PartialEq)]
pub enum Healthcheck {
    None,
    Cmd {
        test: CommandForm,
        /// Durations in nanoseconds, as the image config stores them.
        interval: Option<u64>,
        timeout: Option<u64>,
        start_period: Option<u64>,
        start_interval: Option<u64>,
        retries: Option<u32>,
    },
}
