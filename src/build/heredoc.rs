//! Variable expansion inside heredoc bodies: `$VAR` and `${VAR...}` expand, while quotes and
//! other text stay as written (unlike word expansion, which removes quotes).

use crate::dockerfile::{ExpandError, Lexer};

/// Expands the variable references in `content`; `\$` keeps a literal `$`.
pub(crate) fn expand(
    lexer: &Lexer,
    content: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let bytes = content.as_bytes();
    let mut out = String::with_capacity(content.len());
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'$') {
            out.push_str(&content[literal_start..i]);
            out.push('$');
            i += 2;
            literal_start = i;
            continue;
        }
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let end = variable_end(bytes, i);
        if end == i + 1 {
            i += 1;
            continue;
        }
        out.push_str(&content[literal_start..i]);
        out.push_str(&lexer.process_word(&content[i..end], lookup)?);
        i = end;
        literal_start = i;
    }
    out.push_str(&content[literal_start..]);
    Ok(out)
}

/// The end (exclusive) of the variable reference starting at the `$` at `start`.
fn variable_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    if bytes.get(i) == Some(&b'{') {
        let mut depth = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        return start + 1;
    }
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables_and_keeps_quotes() {
        let lexer = Lexer::new('\\');
        let lookup = |name: &str| (name == "NAME").then(|| "world".to_string());
        let expand = |text: &str| expand(&lexer, text, &lookup).unwrap();
        assert_eq!(expand("hello $NAME\n"), "hello world\n");
        assert_eq!(expand("say \"${NAME}\" 'x'\n"), "say \"world\" 'x'\n");
        assert_eq!(expand("${MISSING:-dflt} $ \\$NAME"), "dflt $ $NAME");
        assert_eq!(expand("cost: 5$"), "cost: 5$");
    }
}
