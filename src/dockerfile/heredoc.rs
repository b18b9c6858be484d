//! Completes `RUN` here-document support where `parse-dockerfile` 0.1.9 stops: it only reads a
//! here-document that starts the command (`RUN <<EOF`), and only the first one. For `RUN cat <<EOF >
//! /f` or `RUN <<A <<B`, the bodies it does not read would be taken for instructions. Before the real
//! parse, this finds those bodies (lines up to the delimiter, as BuildKit reads them), keeps them, and
//! blanks their lines in the text given to the crate (line numbers stay the same).

use std::collections::HashMap;

use parse_dockerfile as syntax;

use super::error::{DockerfileError, line_column};
use super::model::HereDoc;
use super::words::split_words;

/// The text to parse and the here-documents taken out of it.
pub(crate) struct CompletedHeredocs {
    /// The Dockerfile text with the extra here-document bodies blanked out.
    pub text: String,
    /// Extra here-documents of each `RUN`, by the 1-based line of its `RUN` keyword, in order.
    pub extra: HashMap<usize, Vec<HereDoc>>,
}

/// Finds the `RUN` here-documents the crate would miss; see the module comment.
pub(crate) fn complete_run_heredocs(
    original: &str,
    file: &str,
) -> Result<CompletedHeredocs, DockerfileError> {
    let escape = escape_char(original);
    let mut text = original.to_string();
    let mut extra: HashMap<usize, Vec<HereDoc>> = HashMap::new();
    // Each round fixes the first RUN with missed bodies, then parses again (the crate has no resume).
    while let Some((line, (docs, blank))) = next_missed(&text, &extra, escape, file, original)? {
        let newlines = text[blank.clone()].matches('\n').count();
        text.replace_range(blank, &"\n".repeat(newlines));
        extra.insert(line, docs);
    }
    Ok(CompletedHeredocs { text, extra })
}

/// The first RUN (not yet in `done`) whose here-document bodies the crate misses: its line, the
/// bodies, and the byte range to blank.
fn next_missed(
    text: &str,
    done: &HashMap<usize, Vec<HereDoc>>,
    escape: char,
    file: &str,
    original: &str,
) -> Result<Option<(usize, Bodies)>, DockerfileError> {
    let Ok(instructions) = syntax::parse_iter(text) else {
        return Ok(None);
    };
    for instruction in instructions {
        match instruction {
            // Errors are reported by the real parse afterwards.
            Err(_) => return Ok(None),
            Ok(syntax::Instruction::Run(run)) => {
                let line = line_column(text, run.run.span.start).0;
                if done.contains_key(&line) {
                    continue;
                }
                if let Some((docs, blank)) = missed_bodies(text, &run, escape, file, original)? {
                    return Ok(Some((line, (docs, blank))));
                }
            }
            Ok(_) => {}
        }
    }
    Ok(None)
}

/// The escape character from the parser directives (the crate parses them from the header alone).
fn escape_char(text: &str) -> char {
    let header: String = text
        .lines()
        .take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    syntax::parse(&format!("{header}FROM scratch\n"))
        .ok()
        .and_then(|d| d.parser_directives.escape.map(|e| e.value.value))
        .unwrap_or('\\')
}

/// A here-document word of a command line: `<<EOF`, `<<-EOF`, `<<"EOF"` (BuildKit: `^<<(-?)\s*([^<]*)$`).
/// Returns (name, strip_tabs, expand).
fn heredoc_marker(word: &str) -> Option<(String, bool, bool)> {
    let rest = word.strip_prefix("<<")?;
    let (rest, strip_tabs) = match rest.strip_prefix('-') {
        Some(r) => (r, true),
        None => (rest, false),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let quoted = rest.contains(['"', '\'']);
    let name: String = rest.chars().filter(|c| !matches!(c, '"' | '\'')).collect();
    (!name.is_empty()).then_some((name, strip_tabs, !quoted))
}

type Bodies = (Vec<HereDoc>, std::ops::Range<usize>);

/// The here-document bodies of `run` that the crate did not read, and the byte range they occupy.
fn missed_bodies(
    text: &str,
    run: &syntax::RunInstruction<'_>,
    escape: char,
    file: &str,
    original: &str,
) -> Result<Option<Bodies>, DockerfileError> {
    let syntax::Command::Shell(command) = &run.arguments else {
        return Ok(None);
    };
    let (head, mut cursor) = match (run.here_docs.first(), run.here_docs.last()) {
        (Some(first), Some(last)) => {
            let head = &text[run.run.span.end..first.span.start];
            // The crate's body ends where the delimiter line starts; skip that line.
            (head, next_line_start(text, last.span.end))
        }
        _ => (
            &text[run.run.span.end..command.span.end],
            next_line_start(text, command.span.end),
        ),
    };
    let markers: Vec<(String, bool, bool)> = split_words(head, escape)
        .iter()
        .filter_map(|w| heredoc_marker(w))
        .collect();
    if markers.len() <= run.here_docs.len() {
        return Ok(None);
    }
    let start = cursor;
    let mut docs = Vec::new();
    for (name, strip_tabs, expand) in markers.into_iter().skip(run.here_docs.len()) {
        let mut content = String::new();
        loop {
            if cursor >= text.len() {
                let (line, column) = line_column(text, run.run.span.start);
                return Err(DockerfileError::at(
                    file,
                    original,
                    line,
                    column,
                    format!("unterminated here-document: no line {name:?} ends it"),
                ));
            }
            let end = text[cursor..].find('\n').map_or(text.len(), |i| cursor + i);
            let raw_line = &text[cursor..end];
            let body_line = if strip_tabs {
                raw_line.trim_start_matches('\t')
            } else {
                raw_line
            };
            cursor = (end + 1).min(text.len());
            if body_line == name {
                break;
            }
            content.push_str(body_line);
            content.push('\n');
        }
        docs.push(HereDoc {
            name,
            content,
            expand,
            strip_tabs,
        });
    }
    Ok(Some((docs, start..cursor)))
}

fn next_line_start(text: &str, offset: usize) -> usize {
    text[offset..]
        .find('\n')
        .map_or(text.len(), |i| offset + i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_follow_buildkit_rules() {
        assert_eq!(heredoc_marker("<<EOF"), Some(("EOF".into(), false, true)));
        assert_eq!(
            heredoc_marker("<<-'END'"),
            Some(("END".into(), true, false))
        );
        assert_eq!(heredoc_marker("<<<word"), None);
        assert_eq!(heredoc_marker("<<"), None);
        assert_eq!(heredoc_marker("'<<EOF'"), None);
    }

    #[test]
    fn bodies_after_the_command_are_taken_out() {
        let text = "FROM x\nRUN cat <<EOF > /f\nhello\nRUN not an instruction\nEOF\nRUN true\n";
        let done = complete_run_heredocs(text, "Dockerfile").unwrap();
        assert_eq!(done.text, "FROM x\nRUN cat <<EOF > /f\n\n\n\nRUN true\n");
        assert_eq!(
            done.extra.get(&2).unwrap(),
            &vec![HereDoc {
                name: "EOF".into(),
                content: "hello\nRUN not an instruction\n".into(),
                expand: true,
                strip_tabs: false
            }]
        );
    }

    #[test]
    fn text_without_missed_bodies_is_unchanged() {
        let text = "FROM x\nRUN <<EOF\necho\nEOF\nRUN echo '<<EOF'\n";
        let done = complete_run_heredocs(text, "Dockerfile").unwrap();
        assert_eq!(done.text, text);
        assert!(done.extra.is_empty());
    }
}
