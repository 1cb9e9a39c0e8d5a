//! [`Problem`]: one thing wrong with a config, naming the YAML line, the node, the field and
//! the value; [`Problems`]: all of them, reported at once.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One thing wrong (or worth a warning) in a block-device config.
///
/// Rendered as `line 12: mkfs "fs_root": label="this_is_too_long": too long for xfs …`.
/// Names and values are printed with Rust's debug escaping, so control characters and
/// binary junk show as `\n`, `\u{1b}` and never reach the terminal raw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// 1-based YAML line, when the problem comes from the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// Node type (`partitioning`, `mkfs`…), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Node name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The field (`size`, `base`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The value as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl Problem {
    /// A problem at `line` with `message`; add the rest with the builder methods.
    pub fn at(line: usize, message: impl Into<String>) -> Self {
        Problem {
            line: Some(line),
            kind: None,
            node: None,
            field: None,
            value: None,
            message: message.into(),
        }
    }

    /// A problem that no single line carries.
    pub fn global(message: impl Into<String>) -> Self {
        Problem {
            line: None,
            ..Problem::at(0, message)
        }
    }

    /// Name the node.
    pub fn node(mut self, kind: &str, name: &str) -> Self {
        self.kind = Some(kind.to_owned());
        self.node = Some(name.to_owned());
        self
    }

    /// Name the node type only (the node has no usable name).
    pub fn kind(mut self, kind: &str) -> Self {
        self.kind = Some(kind.to_owned());
        self
    }

    /// Name the field and its value.
    pub fn field(mut self, field: &str, value: &str) -> Self {
        self.field = Some(field.to_owned());
        self.value = Some(value.to_owned());
        self
    }

    /// Name the field only.
    pub fn key(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        match (&self.kind, &self.node) {
            (Some(k), Some(n)) => write!(f, "{k} {}: ", Quoted(n))?,
            (Some(k), None) => write!(f, "{k}: ")?,
            (None, Some(n)) => write!(f, "{}: ", Quoted(n))?,
            (None, None) => {}
        }
        match (&self.field, &self.value) {
            (Some(k), Some(v)) => write!(f, "{k}={}: ", Quoted(v))?,
            (Some(k), None) => write!(f, "{k}: ")?,
            _ => {}
        }
        // The message is ours, but may quote input: escape anything that is not printable,
        // and cut what a hostile config made huge.
        let (msg, cut) = prefix(&self.message, MAX_MESSAGE);
        for c in msg.chars() {
            if (c.is_control() && c != '\n') || is_invisible_format(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        if cut > 0 {
            write!(f, "… ({cut} more bytes)")?;
        }
        Ok(())
    }
}

/// Longest name or value quoted in full (bytes); longer ones are cut.
const MAX_QUOTED: usize = 160;
/// Longest message printed in full (bytes).
const MAX_MESSAGE: usize = 4096;

/// The longest prefix of `s` of at most `max` bytes ending on a character boundary, and how
/// many bytes were cut.
fn prefix(s: &str, max: usize) -> (&str, usize) {
    if s.len() <= max {
        return (s, 0);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], s.len() - end)
}

/// A name or value from the config, quoted with Rust's escaping (control and formatting
/// characters shown as `\n`, `\u{202e}`) and cut after [`MAX_QUOTED`] bytes, so a 10 MB
/// name gives a short line.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match prefix(self.0, MAX_QUOTED) {
            (all, 0) => write!(f, "{all:?}"),
            (head, cut) => write!(f, "{head:?}… ({cut} more bytes)"),
        }
    }
}

/// Every problem found, in line order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Sort by line (problems without a line last), keeping the order of equal lines, and
    /// drop exact duplicates.
    pub fn sorted(mut self) -> Self {
        self.0.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        self.0.dedup();
        self
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Unicode formatting characters that change how text is shown without being seen: the
/// bidirectional controls (U+202A–U+202E, U+2066–U+2069, U+200E, U+200F, U+061C), zero-width
/// characters (U+200B–U+200D, U+2060, U+FEFF) and the soft hyphen. In a name, label or mount
/// point they make what a terminal shows differ from the file, label or path made
/// (`image\u{202E}exe.war` shows as `imageraw.exe`…).
pub(crate) fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}
