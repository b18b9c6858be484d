//! Splitting of `ENV`/`LABEL`/`ARG` arguments into words and `key=value` pairs, as BuildKit's parser
//! does: words break on unquoted whitespace, quotes and escapes are KEPT (expansion removes them later).

/// Splits `rest` into whitespace-separated words, honouring quotes and the escape character, and keeping
/// both in the words. A quoted empty word (`""`) is kept; an escape at the very end is dropped.
pub(crate) fn split_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut keep_empty = false;
    let mut chars = rest.chars().peekable();
    while let Some(ch) = chars.next() {
        if let Some(q) = quote {
            if ch == q {
                quote = None;
                word.push(ch);
            } else if ch == escape && q != '\'' {
                word.push(ch);
                if let Some(next) = chars.next() {
                    word.push(next);
                } else {
                    word.pop();
                }
            } else {
                word.push(ch);
            }
            continue;
        }
        if ch.is_whitespace() {
            if in_word && (keep_empty || !word.is_empty()) {
                words.push(std::mem::take(&mut word));
            }
            word.clear();
            in_word = false;
            keep_empty = false;
            continue;
        }
        in_word = true;
        if ch == '\'' || ch == '"' {
            quote = Some(ch);
            keep_empty = true;
            word.push(ch);
        } else if ch == escape {
            // An escape at the very end of the text is dropped.
            if let Some(next) = chars.next() {
                word.push(ch);
                word.push(next);
            }
        } else {
            word.push(ch);
        }
    }
    if in_word && (keep_empty || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// Why `key=value` arguments could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NameValueError {
    #[error("{0} must have two arguments")]
    MissingValue(&'static str),
    #[error("{0} names can not be blank")]
    BlankName(&'static str),
    #[error("Syntax error - can't find = in {0:?}. Must be of the form: name=value")]
    MissingEquals(String),
}

/// Splits `ENV`/`LABEL` arguments: `k=v k2="v 2"` (new form) or `k rest of line` (legacy form, chosen when
/// the first word has no `=`). Values keep their quotes for the expander to remove.
pub(crate) fn split_name_values(
    rest: &str,
    escape: char,
    instruction: &'static str,
) -> Result<Vec<(String, String)>, NameValueError> {
    let words = split_words(rest, escape);
    let Some(first) = words.first() else {
        return Err(NameValueError::MissingValue(instruction));
    };
    if !first.contains('=') {
        let trimmed = rest.trim();
        let Some(split_at) = trimmed.find(char::is_whitespace) else {
            return Err(NameValueError::MissingValue(instruction));
        };
        let (key, value) = trimmed.split_at(split_at);
        return Ok(vec![(key.to_string(), value.trim_start().to_string())]);
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err(NameValueError::BlankName(instruction)),
            Some((key, value)) => Ok((key.to_string(), value.to_string())),
            None => Err(NameValueError::MissingEquals(word)),
        })
        .collect()
}

/// Splits `ARG` arguments: each word is `name` or `name=default`.
pub(crate) fn split_arg_decls(
    rest: &str,
    escape: char,
) -> Result<Vec<(String, Option<String>)>, NameValueError> {
    let words = split_words(rest, escape);
    if words.is_empty() {
        return Err(NameValueError::MissingValue("ARG"));
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err(NameValueError::BlankName("ARG")),
            Some((name, value)) => Ok((name.to_string(), Some(value.to_string()))),
            None => Ok((word, None)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_on_unquoted_whitespace_and_keep_quotes() {
        assert_eq!(
            split_words(r#"a=1 b="x y"  c='p q'"#, '\\'),
            vec!["a=1", r#"b="x y""#, "c='p q'"]
        );
    }

    #[test]
    fn words_keep_escaped_spaces_with_their_escape() {
        assert_eq!(split_words(r"a=x\ y b", '\\'), vec![r"a=x\ y", "b"]);
        assert_eq!(split_words("a=x` y b", '`'), vec!["a=x` y", "b"]);
    }

    #[test]
    fn words_keep_quoted_empty_word() {
        assert_eq!(split_words(r#"a "" b"#, '\\'), vec!["a", r#""""#, "b"]);
    }

    #[test]
    fn name_values_new_form() {
        let pairs = split_name_values(r#"A=1 B="two words" C=$A"#, '\\', "ENV").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), r#""two words""#.to_string()),
                ("C".to_string(), "$A".to_string())
            ]
        );
    }

    #[test]
    fn name_values_legacy_form_takes_rest_of_line() {
        let pairs = split_name_values("MY_VAR  some value  here", '\\', "ENV").unwrap();
        assert_eq!(
            pairs,
            vec![("MY_VAR".to_string(), "some value  here".to_string())]
        );
    }

    #[test]
    fn name_values_errors() {
        assert_eq!(
            split_name_values("ONLYKEY", '\\', "ENV"),
            Err(NameValueError::MissingValue("ENV"))
        );
        assert_eq!(
            split_name_values("a=1 b", '\\', "LABEL"),
            Err(NameValueError::MissingEquals("b".to_string()))
        );
        assert_eq!(
            split_name_values("=1", '\\', "ENV"),
            Err(NameValueError::BlankName("ENV"))
        );
    }

    #[test]
    fn arg_decls_with_and_without_defaults() {
        let decls = split_arg_decls(r#"A B=2 C="x y""#, '\\').unwrap();
        assert_eq!(
            decls,
            vec![
                ("A".to_string(), None),
                ("B".to_string(), Some("2".to_string())),
                ("C".to_string(), Some(r#""x y""#.to_string()))
            ]
        );
    }
}
