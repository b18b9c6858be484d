//! The error type of Dockerfile parsing: what went wrong, where (`file:line:column`), and the source line.

use super::model::Location;

/// A Dockerfile that cannot be parsed or uses an instruction wrongly.
///
/// Displays as `Dockerfile:3:1: unknown instruction "FORM"`; `source_line` holds the offending line so a
/// CLI can print it underneath.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct DockerfileError {
    pub location: Location,
    pub message: String,
    /// The full text of the line the error points at (without its newline); empty when unknown.
    pub source_line: String,
}

impl DockerfileError {
    /// An error at `line:column` (1-based) of `text`, which is the file named `file`.
    pub(crate) fn at(
        file: &str,
        text: &str,
        line: usize,
        column: usize,
        message: impl Into<String>,
    ) -> Self {
        let source_line = if line == 0 {
            String::new()
        } else {
            text.lines().nth(line - 1).unwrap_or_default().to_string()
        };
        DockerfileError {
            location: Location {
                file: file.to_string(),
                line: line.max(1),
                column: column.max(1),
            },
            message: message.into(),
            source_line,
        }
    }
}

/// Converts a byte offset in `text` to a 1-based (line, column); column counts characters.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
