//! Docker's word expansion (BuildKit `shell.Lex`): `$VAR`, `${VAR}`, `${VAR:-x}` and friends, quotes and
//! the escape character, applied to instruction arguments at build time with the current ARG/ENV values.
//!
//! Quotes are removed from processed words (`"a b"` -> `a b`), single quotes disable expansion, and the
//! escape character (`\`, or `` ` `` with `# escape=``) makes the next character literal. Unset variables
//! expand to the empty string. [`Lexer::process_words`] also splits the result into words the way Docker
//! does for `EXPOSE`/`VOLUME`-style lists: on unquoted whitespace, including whitespace that came from a
//! variable's value.

use super::glob::Pattern;

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {word:?}: {reason}")]
pub struct ExpandError {
    /// The word being expanded.
    pub word: String,
    pub reason: String,
}

/// Expands words with Docker's rules; `escape` is the Dockerfile's escape character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    /// Quotes are ordinary characters (here-document bodies are scripts, not Dockerfile words).
    skip_quotes: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            skip_quotes: false,
        }
    }

    /// The lexer BuildKit uses for a here-document body whose delimiter is unquoted: only `$`
    /// expansions and `\` escapes are processed; quotes stay as written.
    pub fn for_heredoc() -> Self {
        Lexer {
            escape: '\\',
            skip_quotes: true,
        }
    }

    /// Expands `word` as one word (whitespace kept), removing quotes and escapes.
    pub fn process_word(
        &self,
        word: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, ExpandError> {
        self.run(word, lookup).map(|(joined, _)| joined)
    }

    /// Expands `word` and splits the result into words on unquoted whitespace.
    pub fn process_words(
        &self,
        word: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<String>, ExpandError> {
        self.run(word, lookup).map(|(_, words)| words)
    }

    fn run(
        &self,
        word: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(String, Vec<String>), ExpandError> {
        let mut scanner = Scanner {
            chars: word.chars().collect(),
            pos: 0,
            escape: self.escape,
            skip_quotes: self.skip_quotes,
            lookup,
        };
        scanner
            .process_until(None, false)
            .map_err(|reason| ExpandError {
                word: word.to_string(),
                reason,
            })
    }
}

/// Accumulates words: whitespace from unquoted text or variable values separates them; quoted and
/// escaped text never does.
#[derive(Default)]
struct Words {
    current: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word && !self.current.is_empty() {
                self.words.push(std::mem::take(&mut self.current));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }

    fn add_raw_char(&mut self, c: char) {
        self.current.push(c);
        self.in_word = true;
    }

    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_str(&mut self, s: &str) {
        self.current.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.words.push(self.current);
        }
        self.words
    }
}

struct Scanner<'l> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    skip_quotes: bool,
    lookup: &'l dyn Fn(&str) -> Option<String>,
}

type Step<T> = Result<T, String>;

impl Scanner<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    /// Processes until `stop` (consumed) or the end of input. `raw_escapes` keeps escape characters in the
    /// output (used for patterns, where the pattern matcher interprets them).
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Step<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            match c {
                '\'' if !self.skip_quotes => {
                    let text = self.single_quoted()?;
                    result.push_str(&text);
                    words.add_raw_str(&text);
                }
                '"' if !self.skip_quotes => {
                    let text = self.double_quoted()?;
                    result.push_str(&text);
                    words.add_raw_str(&text);
                }
                '$' => {
                    let text = self.dollar()?;
                    result.push_str(&text);
                    words.add_str(&text);
                }
                _ => {
                    self.pos += 1;
                    if c == self.escape {
                        if raw_escapes {
                            words.add_raw_char(c);
                            result.push(c);
                        }
                        // An escape at the very end of the word is dropped.
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(c);
                        result.push(c);
                    }
                }
            }
        }
        match stop {
            Some(stop) => Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            )),
            None => Ok((result, words.finish())),
        }
    }

    /// `'...'`: everything literal up to the next single quote.
    fn single_quoted(&mut self) -> Step<String> {
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    );
                }
                Some('\'') => return Ok(text),
                Some(c) => text.push(c),
            }
        }
    }

    /// `"..."`: literal except `$` expansions and escapes of `"`, `$` and the escape character.
    fn double_quoted(&mut self) -> Step<String> {
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    );
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(text);
                }
                Some('$') => text.push_str(&self.dollar()?),
                Some(c) => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.peek() {
                            None => continue,
                            Some(next) if next == '"' || next == '$' || next == self.escape => {
                                self.pos += 1;
                                text.push(next);
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    text.push(c);
                }
            }
        }
    }

    /// A name after `$`: letters/digits/underscore, a run of digits, or one special parameter character.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                return c.to_string();
            }
            if !(c.is_alphanumeric() || c == '_') {
                break;
            }
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn dollar(&mut self) -> Step<String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok((self.lookup)(&name).unwrap_or_default());
        }
        self.pos += 1;
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        let value = (self.lookup)(&name);
        let Some(modifier) = self.next() else {
            return Err("syntax error: missing '}'".into());
        };
        match modifier {
            '}' => Ok(value.unwrap_or_default()),
            ':' => {
                let Some(op) = self.next() else {
                    return Err("syntax error: missing '}'".into());
                };
                if !matches!(op, '-' | '+' | '?') {
                    return Err(format!("unsupported modifier (:{op}) in substitution"));
                }
                let word = self.modifier_word(false)?;
                Ok(apply_modifier(&name, op, true, value, word)?)
            }
            '-' | '+' | '?' => {
                let word = self.modifier_word(false)?;
                Ok(apply_modifier(&name, modifier, false, value, word)?)
            }
            '#' | '%' => {
                let mut word = self.modifier_word(true)?;
                let greedy = word.starts_with(modifier);
                if greedy {
                    word.remove(0);
                }
                let value = value.unwrap_or_default();
                let pattern = Pattern::shell(&word).map_err(|e| e.to_string())?;
                Ok(trim_by_pattern(&value, &pattern, modifier == '#', greedy))
            }
            '/' => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.pos += 1;
                }
                let (pattern_text, _) = self.process_until(Some('/'), true)?;
                let (replacement, _) = self.process_until(Some('}'), true)?;
                let pattern = Pattern::shell(&pattern_text).map_err(|e| e.to_string())?;
                Ok(replace_by_pattern(
                    &value.unwrap_or_default(),
                    &pattern,
                    &replacement,
                    replace_all,
                ))
            }
            other => Err(format!("unsupported modifier ({other}) in substitution")),
        }
    }

    fn modifier_word(&mut self, raw_escapes: bool) -> Step<String> {
        match self.process_until(Some('}'), raw_escapes) {
            Ok((word, _)) => Ok(word),
            Err(_) if self.peek().is_none() => Err("syntax error: missing '}'".into()),
            Err(e) => Err(e),
        }
    }
}

/// `${name-word}`, `${name+word}`, `${name?word}` and their `:` forms (which also treat empty as unset).
fn apply_modifier(
    name: &str,
    op: char,
    null_is_unset: bool,
    value: Option<String>,
    word: String,
) -> Step<String> {
    let unset = match &value {
        None => true,
        Some(v) => null_is_unset && v.is_empty(),
    };
    match op {
        '-' => Ok(if unset {
            word
        } else {
            value.unwrap_or_default()
        }),
        '+' => Ok(if unset { String::new() } else { word }),
        _ => {
            if unset {
                let default = if value.is_none() {
                    "is not allowed to be unset"
                } else {
                    "is not allowed to be empty"
                };
                let message = if word.is_empty() {
                    default.to_string()
                } else {
                    word
                };
                Err(format!("{name}: {message}"))
            } else {
                Ok(value.unwrap_or_default())
            }
        }
    }
}

/// `${v#p}`/`${v##p}` (prefix) and `${v%p}`/`${v%%p}` (suffix): remove the shortest or longest match.
fn trim_by_pattern(value: &str, pattern: &Pattern, prefix: bool, greedy: bool) -> String {
    let boundaries: Vec<usize> = value
        .char_indices()
        .map(|(i, _)| i)
        .chain([value.len()])
        .collect();
    let candidates: Box<dyn Iterator<Item = &usize>> = match (prefix, greedy) {
        (true, false) | (false, true) => Box::new(boundaries.iter()),
        (true, true) | (false, false) => Box::new(boundaries.iter().rev()),
    };
    for &cut in candidates {
        if prefix && pattern.matches(&value[..cut]) {
            return value[cut..].to_string();
        }
        if !prefix && pattern.matches(&value[cut..]) {
            return value[..cut].to_string();
        }
    }
    value.to_string()
}

/// `${v/p/r}` (first, longest match) and `${v//p/r}` (all matches).
fn replace_by_pattern(value: &str, pattern: &Pattern, replacement: &str, all: bool) -> String {
    let boundaries: Vec<usize> = value
        .char_indices()
        .map(|(i, _)| i)
        .chain([value.len()])
        .collect();
    let mut out = String::new();
    let mut i = 0;
    let mut replaced = false;
    while i < boundaries.len() {
        let start = boundaries[i];
        // The first replacement may match the empty string (as Go's regexp does); repeated ones may not.
        let matched_end = if replaced && !all {
            None
        } else {
            boundaries[i..]
                .iter()
                .rev()
                .copied()
                .find(|&end| (end > start || !all) && pattern.matches(&value[start..end]))
        };
        match matched_end {
            Some(end) => {
                out.push_str(replacement);
                replaced = true;
                if end == start {
                    // An empty match replaces nothing: keep the character and move on.
                    if start < value.len() {
                        out.push_str(&value[start..boundaries[i + 1]]);
                    }
                    i += 1;
                } else {
                    i = boundaries
                        .iter()
                        .position(|&b| b == end)
                        .unwrap_or(boundaries.len());
                }
            }
            None => {
                if start < value.len() {
                    out.push_str(&value[start..boundaries[i + 1]]);
                }
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
