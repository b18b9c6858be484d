//! Wildcard patterns: Go's `filepath.Match` syntax (`*`, `?`, `[a-z]`, `[^x]`, `\` escapes) where `*` and
//! `?` never match `/`, and the shell-pattern variant (used by `${VAR#pattern}`) where they match anything
//! and, as in BuildKit, `[` is literal.

/// A pattern that is not valid `filepath.Match` syntax (unclosed `[`, empty class, trailing escape...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("syntax error in pattern {pattern:?}")]
pub struct BadPattern {
    pub pattern: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyChar,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
    /// Whether `*` and `?` may match `/` (shell patterns) or not (path patterns).
    crosses_slash: bool,
}

impl Pattern {
    /// Compiles a Go `filepath.Match` pattern: `*` and `?` stop at `/`.
    pub fn path(pattern: &str) -> Result<Pattern, BadPattern> {
        Ok(Pattern {
            tokens: tokenize(pattern, true)?,
            crosses_slash: false,
        })
    }

    /// Compiles a shell pattern: `*` and `?` match any character, `/` included; `[` is a literal.
    pub fn shell(pattern: &str) -> Result<Pattern, BadPattern> {
        Ok(Pattern {
            tokens: tokenize(pattern, false)?,
            crosses_slash: true,
        })
    }

    /// Whether the pattern matches all of `text`.
    pub fn matches(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        self.matches_chars(&chars)
    }

    /// Whether the pattern has no wildcard (it is one literal string).
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    fn matches_chars(&self, text: &[char]) -> bool {
        // Iterative wildcard matching with a single backtrack point for the last `*` seen.
        let tokens = &self.tokens;
        let (mut t, mut s) = (0usize, 0usize);
        let mut backtrack: Option<(usize, usize)> = None;
        loop {
            if t < tokens.len() {
                match &tokens[t] {
                    Token::Star => {
                        backtrack = Some((t, s));
                        t += 1;
                        continue;
                    }
                    token if s < text.len() && self.single_matches(token, text[s]) => {
                        t += 1;
                        s += 1;
                        continue;
                    }
                    _ => {}
                }
            } else if s == text.len() {
                return true;
            }
            // Mismatch: let the last star swallow one more character, if it may.
            match backtrack {
                Some((star_t, star_s))
                    if star_s < text.len() && (self.crosses_slash || text[star_s] != '/') =>
                {
                    backtrack = Some((star_t, star_s + 1));
                    t = star_t + 1;
                    s = star_s + 1;
                }
                _ => return false,
            }
        }
    }

    fn single_matches(&self, token: &Token, c: char) -> bool {
        match token {
            Token::Literal(l) => *l == c,
            Token::AnyChar => self.crosses_slash || c != '/',
            Token::Class { negated, ranges } => {
                if !self.crosses_slash && c == '/' {
                    return false;
                }
                ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
            }
            Token::Star => false,
        }
    }
}

/// Go `filepath.Match(pattern, name)`.
pub fn path_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    Ok(Pattern::path(pattern)?.matches(name))
}

fn tokenize(pattern: &str, classes: bool) -> Result<Vec<Token>, BadPattern> {
    let bad = || BadPattern {
        pattern: pattern.to_string(),
    };
    let mut tokens = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
            }
            '?' => tokens.push(Token::AnyChar),
            '\\' => tokens.push(Token::Literal(chars.next().ok_or_else(bad)?)),
            '[' if classes => {
                let (negated, ranges) = parse_class(&mut chars).ok_or_else(bad)?;
                tokens.push(Token::Class { negated, ranges });
            }
            other => tokens.push(Token::Literal(other)),
        }
    }
    Ok(tokens)
}

/// Parses a character class after its `[`: optional `^`, then `c` or `lo-hi` items (with `\` escapes)
/// up to `]`. Returns `(negated, ranges)`, or `None` when the class is malformed.
pub(crate) fn parse_class(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Option<(bool, Vec<(char, char)>)> {
    let negated = chars.next_if_eq(&'^').is_some();
    let mut ranges = Vec::new();
    loop {
        let lo = match chars.next()? {
            ']' if !ranges.is_empty() => return Some((negated, ranges)),
            ']' | '-' => return None,
            '\\' => chars.next()?,
            other => other,
        };
        let hi = if chars.next_if_eq(&'-').is_some() {
            match chars.next()? {
                ']' | '-' => return None,
                '\\' => chars.next()?,
                other => other,
            }
        } else {
            lo
        };
        if hi < lo {
            return None;
        }
        ranges.push((lo, hi));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Cases in the spirit of Go's path/filepath match tests.
    #[test]
    fn go_filepath_match_cases() {
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "-", true),
            ("*x", "xxx", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                path_match(pattern, name),
                Ok(*expected),
                "{pattern} vs {name}"
            );
        }
    }

    #[test]
    fn bad_patterns_are_errors() {
        for pattern in [
            "[]a]", "[-]", "[x-]", "[", "[^", "[^bc", "a[", "a\\", "[a-b-c]", "[z-a]",
        ] {
            assert!(path_match(pattern, "a").is_err(), "{pattern}");
        }
    }

    #[test]
    fn shell_patterns_cross_slashes() {
        assert!(Pattern::shell("a*c").unwrap().matches("ab/c"));
        assert!(Pattern::shell("a?c").unwrap().matches("a/c"));
        assert!(!Pattern::path("a?c").unwrap().matches("a/c"));
    }
}
