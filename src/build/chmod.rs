//! `COPY --chmod` values: octal (`755`, `0644`) and symbolic (`u+x,g-w,o=r`, `a+rX`) modes.

/// A parsed `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<Clause>),
}

/// One `who op perms` clause of a symbolic mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    who: u32,
    op: char,
    perms: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid --chmod value {0:?}: expected an octal mode like 0755 or a symbolic mode like u+x,g-w")]
pub struct ChmodError(pub String);

impl Chmod {
    pub fn parse(text: &str) -> Result<Chmod, ChmodError> {
        let err = || ChmodError(text.to_string());
        if !text.is_empty() && text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            let mode = u32::from_str_radix(text, 8).map_err(|_| err())?;
            if mode > 0o7777 {
                return Err(err());
            }
            return Ok(Chmod::Octal(mode));
        }
        let mut clauses = Vec::new();
        for part in text.split(',') {
            let op_at = part.find(['+', '-', '=']).ok_or_else(err)?;
            let (who_text, rest) = part.split_at(op_at);
            let mut who = 0;
            for c in who_text.chars() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    'a' => 0o7777,
                    _ => return Err(err()),
                };
            }
            if who == 0 {
                who = 0o7777;
            }
            let mut chars = rest.chars();
            let op = chars.next().ok_or_else(err)?;
            let perms: String = chars.collect();
            if !perms.chars().all(|c| "rwxXst".contains(c)) {
                return Err(err());
            }
            clauses.push(Clause { who, op, perms });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The new permission bits for a file or directory whose current bits are `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(clauses) => clauses.iter().fold(mode & 0o7777, |mode, clause| {
                let any_exec = mode & 0o111 != 0;
                let mut bits = 0;
                for c in clause.perms.chars() {
                    bits |= match c {
                        'r' => 0o444,
                        'w' => 0o222,
                        'x' => 0o111,
                        'X' if is_dir || any_exec => 0o111,
                        's' => 0o6000,
                        't' => 0o1000,
                        _ => 0,
                    };
                }
                let bits = bits & clause.who;
                match clause.op {
                    '+' => mode | bits,
                    '-' => mode & !bits,
                    _ => (mode & !(clause.who & 0o7777)) | bits,
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_modes_replace_the_mode() {
        assert_eq!(Chmod::parse("755").unwrap().apply(0o600, false), 0o755);
        assert_eq!(Chmod::parse("0644").unwrap().apply(0o777, true), 0o644);
        assert!(Chmod::parse("999").is_err());
        assert!(Chmod::parse("").is_err());
    }

    #[test]
    fn symbolic_modes_change_the_mode() {
        assert_eq!(Chmod::parse("u+x").unwrap().apply(0o644, false), 0o744);
        assert_eq!(Chmod::parse("go-w").unwrap().apply(0o666, false), 0o644);
        assert_eq!(Chmod::parse("a=r").unwrap().apply(0o755, false), 0o444);
        assert_eq!(Chmod::parse("a+X").unwrap().apply(0o644, true), 0o755);
        assert_eq!(Chmod::parse("a+X").unwrap().apply(0o644, false), 0o644);
        assert_eq!(Chmod::parse("u=rwx,g=rx,o=").unwrap().apply(0, false), 0o750);
        assert!(Chmod::parse("q+x").is_err());
        assert!(Chmod::parse("u+z").is_err());
    }
}
