//! Validation of instruction flags (`--from=x`, `--link`, ...) against the set each instruction accepts,
//! with BuildKit's error messages for unknown, duplicated, value-less and non-boolean flags.

use std::collections::HashMap;

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlagKind {
    /// `--link` or `--link=true|false`.
    Bool,
    /// `--from=x`, at most once.
    Single,
    /// `--mount=...`, repeatable.
    Repeated,
}

/// A flag given on an instruction, as the parser crate hands it over.
pub(crate) struct RawFlag<'a> {
    pub name: &'a str,
    pub value: Option<&'a str>,
    /// Byte offset of the `--` in the Dockerfile text.
    pub offset: usize,
}

/// A flag error and the byte offset of the flag it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlagError {
    pub offset: usize,
    pub message: String,
}

/// The validated flags of one instruction.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    bools: HashMap<&'static str, bool>,
    singles: HashMap<&'static str, String>,
    repeated: HashMap<&'static str, Vec<String>>,
    /// Byte offset of each flag given (the last one for repeated flags).
    offsets: HashMap<&'static str, usize>,
}

impl Flags {
    /// Checks `raw` against `allowed` (name, kind) pairs.
    pub(crate) fn validate(
        raw: &[RawFlag<'_>],
        allowed: &[(&'static str, FlagKind)],
    ) -> Result<Flags, FlagError> {
        let mut flags = Flags::default();
        let mut seen: Vec<&str> = Vec::new();
        for flag in raw {
            let error = |message: String| FlagError {
                offset: flag.offset,
                message,
            };
            let Some(&(name, kind)) = allowed.iter().find(|(name, _)| *name == flag.name) else {
                return Err(error(format!("unknown flag: {}", flag.name)));
            };
            if kind != FlagKind::Repeated && seen.contains(&name) {
                return Err(error(format!("duplicate flag specified: {name}")));
            }
            seen.push(name);
            flags.offsets.insert(name, flag.offset);
            match kind {
                FlagKind::Bool => {
                    let value = match flag.value {
                        None => true,
                        Some(v) if v.eq_ignore_ascii_case("true") => true,
                        Some(v) if v.eq_ignore_ascii_case("false") => false,
                        Some(v) => {
                            return Err(error(format!(
                                "expecting boolean value for flag {name}, not: {v}"
                            )));
                        }
                    };
                    flags.bools.insert(name, value);
                }
                FlagKind::Single | FlagKind::Repeated => {
                    let Some(value) = flag.value else {
                        return Err(error(format!("missing a value on flag: {name}")));
                    };
                    if kind == FlagKind::Single {
                        flags.singles.insert(name, value.to_string());
                    } else {
                        flags
                            .repeated
                            .entry(name)
                            .or_default()
                            .push(value.to_string());
                    }
                }
            }
        }
        Ok(flags)
    }

    pub(crate) fn bool(&self, name: &str) -> Option<bool> {
        self.bools.get(name).copied()
    }

    /// Where flag `name` was written, if it was.
    pub(crate) fn offset(&self, name: &str) -> Option<usize> {
        self.offsets.get(name).copied()
    }

    /// Checks the value of single flag `name` (if given) with `valid`; values with `$` are left to be
    /// checked after expansion at build time.
    pub(crate) fn check_value(
        &self,
        name: &str,
        valid: fn(&str) -> bool,
        want: &str,
    ) -> Result<(), FlagError> {
        match (self.singles.get(name), self.offset(name)) {
            (Some(value), Some(offset)) if !value.contains('$') && !valid(value) => {
                Err(FlagError {
                    offset,
                    message: format!("invalid value for --{name}: {value:?} ({want})"),
                })
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn single(&self, name: &str) -> Option<String> {
        self.singles.get(name).cloned()
    }

    pub(crate) fn repeated(&self, name: &str) -> Vec<String> {
        self.repeated.get(name).cloned().unwrap_or_default()
    }
}

/// A `--chmod` value: octal (`755`, `0644`) or symbolic clauses (`u+x`, `go-w,a+r`).
pub(crate) fn is_valid_chmod(value: &str) -> bool {
    let octal = (1..=4).contains(&value.len()) && value.chars().all(|c| ('0'..='7').contains(&c));
    let symbolic = value.split(',').all(|clause| {
        let ops = clause.trim_start_matches(['u', 'g', 'o', 'a']);
        ops.starts_with(['+', '-', '='])
            && ops.chars().all(|c| {
                matches!(
                    c,
                    '+' | '-' | '=' | 'r' | 'w' | 'x' | 'X' | 's' | 't' | 'u' | 'g' | 'o'
                )
            })
    });
    octal || (!value.is_empty() && symbolic)
}

/// A `RUN --network` value.
pub(crate) fn is_valid_network(value: &str) -> bool {
    matches!(value, "default" | "none" | "host")
}

/// A `RUN --security` value.
pub(crate) fn is_valid_security(value: &str) -> bool {
    matches!(value, "sandbox" | "insecure")
}

#[cfg(test)]
mod tests {
    use super::*;

    const COPY_LIKE: &[(&str, FlagKind)] = &[
        ("from", FlagKind::Single),
        ("link", FlagKind::Bool),
        ("exclude", FlagKind::Repeated),
    ];

    fn raw<'a>(name: &'a str, value: Option<&'a str>) -> RawFlag<'a> {
        RawFlag {
            name,
            value,
            offset: 7,
        }
    }

    #[test]
    fn accepts_known_flags() {
        let flags = Flags::validate(
            &[
                raw("from", Some("builder")),
                raw("link", None),
                raw("exclude", Some("a")),
                raw("exclude", Some("b")),
            ],
            COPY_LIKE,
        )
        .unwrap();
        assert_eq!(flags.single("from").as_deref(), Some("builder"));
        assert_eq!(flags.bool("link"), Some(true));
        assert_eq!(flags.repeated("exclude"), vec!["a", "b"]);
    }

    #[test]
    fn rejects_unknown_flag_with_its_offset() {
        let err = Flags::validate(&[raw("foo", Some("x"))], COPY_LIKE).unwrap_err();
        assert_eq!(
            err,
            FlagError {
                offset: 7,
                message: "unknown flag: foo".to_string()
            }
        );
    }

    #[test]
    fn rejects_bad_values() {
        let err = Flags::validate(&[raw("link", Some("maybe"))], COPY_LIKE).unwrap_err();
        assert_eq!(
            err.message,
            "expecting boolean value for flag link, not: maybe"
        );
        let err = Flags::validate(&[raw("from", None)], COPY_LIKE).unwrap_err();
        assert_eq!(err.message, "missing a value on flag: from");
        let err = Flags::validate(&[raw("from", Some("a")), raw("from", Some("b"))], COPY_LIKE)
            .unwrap_err();
        assert_eq!(err.message, "duplicate flag specified: from");
    }

    #[test]
    fn chmod_values() {
        for good in ["755", "0644", "7", "u+x", "go-w,a+r", "a=rX", "u=g"] {
            assert!(is_valid_chmod(good), "{good}");
        }
        for bad in ["", "888", "07555", "abc", "u", "u+q", "+x,"] {
            assert!(!is_valid_chmod(bad), "{bad}");
        }
    }

    #[test]
    fn bool_flag_accepts_explicit_false() {
        let flags = Flags::validate(&[raw("link", Some("False"))], COPY_LIKE).unwrap();
        assert_eq!(flags.bool("link"), Some(false));
    }
}
