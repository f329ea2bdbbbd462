//! haproxy's configuration lines, split into words as haproxy splits them (its manual, 2.2
//! "Quoting and escaping"): blanks separate words; `#` starts a comment; a backslash escapes
//! the next character (`\ `, `\#`, `\\`, `\'`, `\"`, `\r`, `\n`, `\t`, `\xNN`); double quotes
//! group a word and still honour escapes and `$VAR` / `${VAR}` environment variables; single
//! quotes group a word verbatim. Quoted and unquoted parts next to each other form one word.

use std::path::{Path, PathBuf};

/// One non-empty line: where it is and its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub file: PathBuf,
    pub number: usize,
    pub words: Vec<String>,
    /// The line as written (what a configuration handed on to haproxy repeats).
    pub raw: String,
}

impl Line {
    /// `file:line`, as haproxy names places in its messages.
    pub fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.number)
    }

    pub fn keyword(&self) -> &str {
        self.words.first().map(String::as_str).unwrap_or("")
    }

    /// The words after the keyword.
    pub fn args(&self) -> &[String] {
        self.words.get(1..).unwrap_or(&[])
    }
}

/// A line haproxy itself could not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {reason}")]
pub struct SyntaxError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// The non-empty lines of `text` (from `file`), split into words.
pub fn lines(file: &Path, text: &str) -> Result<Vec<Line>, SyntaxError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |reason: &str| SyntaxError {
            file: file.display().to_string(),
            line: i + 1,
            reason: reason.into(),
        };
        let words = split(raw, |name| std::env::var(name).ok()).map_err(|r| err(&r))?;
        if !words.is_empty() {
            out.push(Line {
                file: file.into(),
                number: i + 1,
                words,
                raw: raw.to_string(),
            });
        }
    }
    Ok(out)
}

/// Splits one line into words; `env` resolves environment variables.
pub fn split(line: &str, env: impl Fn(&str) -> Option<String>) -> Result<Vec<String>, String> {
    #[derive(PartialEq)]
    enum Q {
        None,
        Double,
        Single,
    }
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut q = Q::None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (&q, c) {
            (Q::Single, '\'') => q = Q::None,
            (Q::Single, c) => cur.push(c),
            (Q::Double, '"') => q = Q::None,
            (Q::None, '"') => {
                q = Q::Double;
                in_word = true;
            }
            (Q::None, '\'') => {
                q = Q::Single;
                in_word = true;
            }
            (_, '\\') => {
                in_word = true;
                let Some(e) = chars.next() else {
                    return Err("a backslash ends the line".into());
                };
                match e {
                    'r' => cur.push('\r'),
                    'n' => cur.push('\n'),
                    't' => cur.push('\t'),
                    'x' => {
                        let hex: String = (0..2).filter_map(|_| chars.next()).collect();
                        let v = u8::from_str_radix(&hex, 16)
                            .map_err(|_| format!("invalid escape \\x{hex}"))?;
                        cur.push(v as char);
                    }
                    other => cur.push(other),
                }
            }
            (Q::Double, '$') => {
                let name: String = if chars.peek() == Some(&'{') {
                    chars.next();
                    let mut n = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => n.push(c),
                            None => return Err("unterminated ${...}".into()),
                        }
                    }
                    n
                } else {
                    let mut n = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' {
                            n.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    n
                };
                if name.is_empty() {
                    cur.push('$');
                } else {
                    cur.push_str(&env(&name).unwrap_or_default());
                }
            }
            (Q::Double, c) => cur.push(c),
            (Q::None, '#') => break,
            (Q::None, ' ' | '\t') => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (Q::None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if q != Q::None {
        return Err("a quote is not closed".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(line: &str) -> Vec<String> {
        split(line, |n| (n == "HOME").then(|| "/root".to_string())).unwrap()
    }

    #[test]
    fn words_comments_and_blanks() {
        assert_eq!(
            s("  server  a 10.0.0.2:22\tweight 1 # comment"),
            ["server", "a", "10.0.0.2:22", "weight", "1"]
        );
        assert!(s("# only a comment").is_empty());
        assert!(s("   ").is_empty());
    }

    #[test]
    fn quotes_escapes_and_variables() {
        assert_eq!(
            s(r#"log-tag "a b" 'c $HOME' "$HOME/x" "${HOME}y""#),
            ["log-tag", "a b", "c $HOME", "/root/x", "/rooty"]
        );
        assert_eq!(s(r"a\ b c\#d \x41"), ["a b", "c#d", "A"]);
        assert_eq!(s(r#"x"y"'z'w"#), ["xyzw"], "adjacent parts form one word");
        assert_eq!(s(r#""" x"#), ["", "x"], "an empty quoted word is a word");
        assert_eq!(
            s("unquoted $HOME"),
            ["unquoted", "$HOME"],
            "variables only inside double quotes"
        );
    }

    #[test]
    fn unclosed_quotes_are_errors() {
        assert!(split("a \"b", |_| None).is_err());
        assert!(split("a 'b", |_| None).is_err());
        assert!(split("a \\", |_| None).is_err());
    }
}
