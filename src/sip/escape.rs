//! Peer bytes made safe for the log: [`escaped`] wraps a string from the network (a Call-ID,
//! a URI, any header value) in a `Display` that writes control characters, ANSI escapes, line
//! breaks, bidirectional overrides and other non-printables as Rust escapes (`\r`, `\u{1b}`,
//! `\u{202e}`), backslashes doubled, and cuts it after [`MAX_LOGGED_CHARS`] characters.
//!
//! Why: a log line is read by people in terminals and parsed by tools. A Call-ID with a CR LF
//! forges a second log line; an ANSI escape rewrites what a terminal shows. tracing's text
//! format writes `%field` values raw (string fields without `%` are already written with
//! `Debug`, which escapes them), so every peer-controlled value logged with `%` goes through
//! this wrapper.

use std::fmt;

/// Characters of a peer value written to the log at most; the rest is summarised by length.
pub const MAX_LOGGED_CHARS: usize = 256;

/// A peer-controlled string, written escaped (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

/// Wraps `value` for logging: `tracing::info!(call_id = %escaped(id), ...)`.
pub fn escaped(value: &str) -> Escaped<'_> {
    Escaped(value)
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, c) in self.0.chars().enumerate() {
            if n == MAX_LOGGED_CHARS {
                return write!(f, "...({} bytes in all)", self.0.len());
            }
            match c {
                // Quotes are harmless in a log value; keep them readable.
                '"' | '\'' => write!(f, "{c}")?,
                // Everything else as `escape_debug` writes it: printable characters as they
                // are, control and non-printable ones (and `\`) escaped.
                _ => write!(f, "{}", c.escape_debug())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_or_a_log_parser_would_act_on() {
        let id = "a\r\nINFO forged line\u{1b}[31mred\u{7}\0\t\u{7f}\u{85}\u{202e}b\\c";
        let out = escaped(id).to_string();
        assert_eq!(
            out,
            "a\\r\\nINFO forged line\\u{1b}[31mred\\u{7}\\0\\t\\u{7f}\\u{85}\\u{202e}b\\\\c"
        );
        assert!(!out.chars().any(|c| c.is_control()));
    }

    #[test]
    fn keeps_ordinary_values_as_they_are() {
        for value in [
            "1-2@127.0.0.1",
            "\"Caller, Jr\" <sip:caller@127.0.0.1:5061>;tag=abc",
            "sip:müller@example.com",
            "it's",
            "",
        ] {
            assert_eq!(escaped(value).to_string(), value);
        }
    }

    #[test]
    fn cuts_long_values() {
        let long = "x".repeat(10_000);
        let out = escaped(&long).to_string();
        assert!(out.starts_with(&"x".repeat(MAX_LOGGED_CHARS)));
        assert!(out.ends_with("...(10000 bytes in all)"), "{out}");
        assert!(out.len() < MAX_LOGGED_CHARS + 40);
        let exact = "y".repeat(MAX_LOGGED_CHARS);
        assert_eq!(escaped(&exact).to_string(), exact);
    }
}
