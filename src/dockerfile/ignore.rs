//! `.dockerignore` matching with Docker's rules (moby `patternmatcher` + `ignorefile`), which are NOT
//! gitignore's: patterns are Go `filepath.Match` syntax plus `**`, cleaned like `filepath.Clean` with any
//! leading `/` removed, matched against the whole slash-separated path relative to the context root;
//! a pattern that matches a parent directory matches everything below it; `!` re-includes; the last
//! matching pattern wins; lines starting with `#` are comments.

use std::path::{Path, PathBuf};

use super::glob::{Pattern, parse_class};

/// A `.dockerignore` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("line {line}: invalid .dockerignore pattern {pattern:?}: syntax error in pattern")]
    BadPattern { line: usize, pattern: String },
    #[error("line {line}: illegal exclusion pattern: \"!\"")]
    LoneExclamation { line: usize },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        source: Box<IgnoreError>,
    },
}

/// Compiled `.dockerignore` rules.
#[derive(Debug, Clone, Default)]
pub struct IgnoreMatcher {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// A `!pattern`: re-includes what it matches.
    exclusion: bool,
    how: MatchKind,
}

/// How a cleaned pattern is matched; mirrors patternmatcher's exact/prefix/suffix/regexp split so the
/// same quirks hold (e.g. `**foo` matches `xfoo`, and `abc/**` does not match `abc` itself).
#[derive(Debug, Clone)]
enum MatchKind {
    /// No wildcard: the path must equal the pattern.
    Exact(String),
    /// `dir/**` with no other wildcard: any path starting with `dir/`.
    Prefix(String),
    /// `**/name` or `**name` with no other wildcard: any path ending with the rest (`/name` or `name`),
    /// or equal to `name`.
    Suffix(String),
    Tokens(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    /// `?`: one character other than `/`.
    AnyButSlash,
    /// `*`: any run of characters other than `/`.
    StarButSlash,
    /// `**` or `**/` inside a pattern: any number of leading directories, possibly none.
    AnyDirs,
    /// `**` at the end: anything at all.
    AnyRest,
    /// `[...]`: like a regexp class (it may match `/`).
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl IgnoreMatcher {
    /// Parses `.dockerignore` text (one pattern a line; `#` comments; `!` re-includes).
    pub fn parse(text: &str) -> Result<IgnoreMatcher, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut matcher = IgnoreMatcher::default();
        for (index, raw) in text.lines().enumerate() {
            // Comments are recognised before trimming, as Docker does.
            if !raw.starts_with('#') {
                matcher.add(raw, index + 1)?;
            }
        }
        Ok(matcher)
    }

    /// Builds a matcher from individual patterns (e.g. `COPY --exclude` values); `#` is not special.
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<IgnoreMatcher, IgnoreError> {
        let mut matcher = IgnoreMatcher::default();
        for (index, pattern) in patterns.iter().enumerate() {
            matcher.add(pattern.as_ref(), index + 1)?;
        }
        Ok(matcher)
    }

    /// Adds one pattern (`line` is its 1-based position, for errors); blank patterns are skipped.
    fn add(&mut self, raw: &str, line: usize) -> Result<(), IgnoreError> {
        let mut pattern = raw.trim();
        if pattern.is_empty() {
            return Ok(());
        }
        let exclusion = pattern.starts_with('!');
        if exclusion {
            pattern = pattern[1..].trim();
            if pattern.is_empty() {
                return Err(IgnoreError::LoneExclamation { line });
            }
        }
        let cleaned = clean_path(pattern);
        let cleaned = match cleaned.strip_prefix('/') {
            Some(rest) if !rest.is_empty() => rest.to_string(),
            _ => cleaned,
        };
        let bad = || IgnoreError::BadPattern {
            line,
            pattern: raw.trim().to_string(),
        };
        Pattern::path(&cleaned).map_err(|_| bad())?;
        let how = compile(&cleaned).ok_or_else(bad)?;
        self.rules.push(Rule { exclusion, how });
        Ok(())
    }

    /// Whether there are no rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule is a `!` re-include, so a walker must still look inside excluded directories.
    pub fn has_exclusions(&self) -> bool {
        self.rules.iter().any(|r| r.exclusion)
    }

    /// Whether `rel_path` (slash-separated, relative to the context root) is ignored. A path whose
    /// parent directory is ignored is ignored too unless a later `!` rule re-includes it. `is_dir` is
    /// accepted for callers' clarity; Docker's rules do not distinguish directories.
    pub fn is_excluded(&self, rel_path: &str, _is_dir: bool) -> bool {
        let path = clean_path(rel_path);
        let path = path.trim_start_matches('/');
        if path.is_empty() || path == "." {
            return false;
        }
        let parents: Vec<&str> = path
            .char_indices()
            .filter(|(_, c)| *c == '/')
            .map(|(i, _)| &path[..i])
            .collect();
        let mut excluded = false;
        for rule in &self.rules {
            // An include rule cannot change an excluded path, nor an exclusion rule an included one.
            if rule.exclusion != excluded {
                continue;
            }
            let matched = rule.how.matches(path) || parents.iter().any(|p| rule.how.matches(p));
            if matched {
                excluded = !rule.exclusion;
            }
        }
        excluded
    }
}

impl MatchKind {
    fn matches(&self, path: &str) -> bool {
        match self {
            MatchKind::Exact(p) => path == p,
            MatchKind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            MatchKind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|name| path == name)
            }
            MatchKind::Tokens(tokens) => {
                let chars: Vec<char> = path.chars().collect();
                let mut failed = vec![false; (tokens.len() + 1) * (chars.len() + 1)];
                match_tokens(tokens, &chars, 0, 0, &mut failed)
            }
        }
    }
}

/// Backtracking matcher over tokens; `failed` memoises (token, char) positions known not to match.
fn match_tokens(tokens: &[Token], text: &[char], t: usize, s: usize, failed: &mut [bool]) -> bool {
    let key = t * (text.len() + 1) + s;
    if failed[key] {
        return false;
    }
    let result = match tokens.get(t) {
        None => s == text.len(),
        Some(Token::Literal(c)) => {
            text.get(s) == Some(c) && match_tokens(tokens, text, t + 1, s + 1, failed)
        }
        Some(Token::AnyButSlash) => {
            text.get(s).is_some_and(|c| *c != '/')
                && match_tokens(tokens, text, t + 1, s + 1, failed)
        }
        Some(Token::Class { negated, ranges }) => {
            text.get(s)
                .is_some_and(|c| ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negated)
                && match_tokens(tokens, text, t + 1, s + 1, failed)
        }
        Some(Token::StarButSlash) => {
            let run = text[s..].iter().take_while(|c| **c != '/').count();
            (0..=run).any(|k| match_tokens(tokens, text, t + 1, s + k, failed))
        }
        Some(Token::AnyDirs) => {
            match_tokens(tokens, text, t + 1, s, failed)
                || (s..text.len())
                    .filter(|&i| text[i] == '/')
                    .any(|i| match_tokens(tokens, text, t + 1, i + 1, failed))
        }
        Some(Token::AnyRest) => {
            (s..=text.len()).any(|i| match_tokens(tokens, text, t + 1, i, failed))
        }
    };
    if !result {
        failed[key] = true;
    }
    result
}

/// Compiles a cleaned pattern the way patternmatcher classifies and translates it.
fn compile(pattern: &str) -> Option<MatchKind> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Wild,
    }
    let mut kind = Kind::Exact;
    let mut tokens = Vec::new();
    let mut chars = pattern.chars().peekable();
    let mut first = true;
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                chars.next_if_eq(&'/');
                if chars.peek().is_none() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        kind = Kind::Wild;
                    }
                    tokens.push(Token::AnyRest);
                } else {
                    kind = Kind::Wild;
                    tokens.push(Token::AnyDirs);
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                kind = Kind::Wild;
                tokens.push(Token::StarButSlash);
            }
            '?' => {
                kind = Kind::Wild;
                tokens.push(Token::AnyButSlash);
            }
            '\\' => match chars.next() {
                Some(escaped) => {
                    kind = Kind::Wild;
                    tokens.push(Token::Literal(escaped));
                }
                None => tokens.push(Token::Literal('\\')),
            },
            '[' => {
                kind = Kind::Wild;
                let (negated, ranges) = parse_class(&mut chars)?;
                tokens.push(Token::Class { negated, ranges });
            }
            other => tokens.push(Token::Literal(other)),
        }
        first = false;
    }
    Some(match kind {
        Kind::Exact => MatchKind::Exact(pattern.to_string()),
        Kind::Prefix => MatchKind::Prefix(pattern[..pattern.len() - 2].to_string()),
        Kind::Suffix => MatchKind::Suffix(pattern[2..].to_string()),
        Kind::Wild => MatchKind::Tokens(tokens),
    })
}

/// Go's `filepath.Clean` for slash-separated paths: collapses `//`, drops `.`, resolves `..` lexically,
/// removes a trailing `/`; empty becomes `.`.
pub fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Loads the ignore rules for a build, as BuildKit chooses them: `<Dockerfile name>.dockerignore` next to
/// the Dockerfile if it exists, else `<context>/.dockerignore`, else no rules. (Docker still sends the
/// Dockerfile and the ignore file themselves even when they are ignored; that does not matter here.)
pub fn load_for_build(
    context_dir: &Path,
    dockerfile_path: &Path,
) -> Result<IgnoreMatcher, IgnoreError> {
    let mut candidates = Vec::new();
    if let Some(name) = dockerfile_path.file_name() {
        let mut specific = name.to_os_string();
        specific.push(".dockerignore");
        candidates.push(dockerfile_path.with_file_name(specific));
    }
    candidates.push(context_dir.join(".dockerignore"));
    for path in candidates {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return IgnoreMatcher::parse(&text).map_err(|source| IgnoreError::InFile {
                    path: path.clone(),
                    source: Box::new(source),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(IgnoreError::Read { path, source }),
        }
    }
    Ok(IgnoreMatcher::default())
}

#[cfg(test)]
mod tests;
