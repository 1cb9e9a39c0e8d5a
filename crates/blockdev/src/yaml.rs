//! A YAML document as a tree whose every node knows its line, read with `yaml-rust2`'s event
//! parser (serde_norway's `Value` carries no positions, and every problem we report names
//! the line it comes from).
//!
//! Scalars keep their source text (`0x83`, `8300`, `3G` stay strings): the block-device
//! fields are all strings or small numbers, and dib's own reading (`str(config['type'])`,
//! `int(type, 16)`) wants the text. Aliases are expanded (bounded, so a "billion laughs"
//! document is an error rather than a memory hog); tags are ignored; only the first
//! document of a stream is read.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deepest nesting accepted (dib's deepest tree is 6 levels).
const MAX_DEPTH: usize = 64;
/// Most nodes accepted, aliases expanded.
const MAX_NODES: usize = 100_000;

/// One YAML node with the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YNode {
    /// 1-based line.
    pub line: usize,
    /// The value.
    pub kind: YKind,
}

/// What a [`YNode`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum YKind {
    /// A scalar's text; `quoted` when it was written in quotes (so `""` is not null).
    Scalar { text: String, quoted: bool },
    /// A sequence.
    Seq(Vec<YNode>),
    /// A mapping, in document order; keys are scalars' text (other keys are reported).
    Map(Vec<(YNode, YNode)>),
}

impl YNode {
    /// The scalar text, when this is a non-null scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            YKind::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// Whether this is YAML's null (`~`, `null`, or nothing).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, YKind::Scalar { text, quoted: false }
            if text.is_empty() || text == "~" || text == "null" || text == "Null" || text == "NULL")
    }

    /// A short name of the node's shape, for messages.
    pub fn shape(&self) -> &'static str {
        match &self.kind {
            YKind::Scalar { .. } if self.is_null() => "nothing",
            YKind::Scalar { .. } => "a scalar",
            YKind::Seq(_) => "a list",
            YKind::Map(_) => "a mapping",
        }
    }

    /// The node as compact text for messages (scalars as written, others abbreviated).
    pub fn brief(&self) -> String {
        match &self.kind {
            YKind::Scalar { text, .. } => text.clone(),
            YKind::Seq(v) => format!("[{} items]", v.len()),
            YKind::Map(v) => format!("{{{} keys}}", v.len()),
        }
    }
}

/// Why the text is not YAML we can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

enum Frame {
    Seq(usize, usize, Vec<YNode>),
    Map(usize, usize, Vec<(YNode, YNode)>, Option<YNode>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: Vec<(usize, YNode)>,
    root: Option<YNode>,
    docs: usize,
    nodes: usize,
    error: Option<YamlError>,
}

impl Builder {
    fn fail(&mut self, line: usize, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                line,
                message: message.into(),
            });
        }
    }

    fn count(&mut self, n: usize, line: usize) {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.fail(
                line,
                format!("more than {MAX_NODES} nodes (aliases expanded)"),
            );
        }
    }

    fn push_value(&mut self, node: YNode) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Map(_, _, entries, key)) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }

    fn remember(&mut self, anchor: usize, node: &YNode) {
        if anchor > 0 {
            self.anchors.push((anchor, node.clone()));
        }
    }
}

fn size_of(n: &YNode) -> usize {
    match &n.kind {
        YKind::Scalar { .. } => 1,
        YKind::Seq(v) => 1 + v.iter().map(size_of).sum::<usize>(),
        YKind::Map(v) => {
            1 + v
                .iter()
                .map(|(k, v)| size_of(k) + size_of(v))
                .sum::<usize>()
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() || self.docs > 1 {
            return;
        }
        let line = mark.line().max(1);
        match ev {
            Event::DocumentStart => self.docs += 1,
            Event::Scalar(text, style, anchor, _) => {
                self.count(1, line);
                let node = YNode {
                    line,
                    kind: YKind::Scalar {
                        text,
                        quoted: style != TScalarStyle::Plain,
                    },
                };
                self.remember(anchor, &node);
                self.push_value(node);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                self.count(1, line);
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(line, format!("nested deeper than {MAX_DEPTH} levels"));
                    return;
                }
                self.stack.push(if matches!(ev, Event::SequenceStart(..)) {
                    Frame::Seq(line, anchor, Vec::new())
                } else {
                    Frame::Map(line, anchor, Vec::new(), None)
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(l, a, items)) => (
                        YNode {
                            line: l,
                            kind: YKind::Seq(items),
                        },
                        a,
                    ),
                    Some(Frame::Map(l, a, entries, _)) => (
                        YNode {
                            line: l,
                            kind: YKind::Map(entries),
                        },
                        a,
                    ),
                    None => return,
                };
                self.remember(anchor, &node);
                self.push_value(node);
            }
            Event::Alias(id) => {
                let Some(node) = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone())
                else {
                    self.fail(line, "alias to an unknown anchor");
                    return;
                };
                self.count(size_of(&node), line);
                if self.error.is_none() {
                    self.push_value(node);
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Parse `text` (its first document) into a [`YNode`] tree; an empty document is null.
pub(crate) fn parse(text: &str) -> Result<YNode, YamlError> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, true) {
        return Err(YamlError {
            line: e.marker().line().max(1),
            message: format!("not valid YAML: {}", e.info()),
        });
    }
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok(b.root.unwrap_or(YNode {
        line: 1,
        kind: YKind::Scalar {
            text: String::new(),
            quoted: false,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_shapes() {
        let n =
            parse("- local_loop:\n    name: image0\n\n- mkfs:\n    type: '8300'\n").expect("parse");
        let YKind::Seq(items) = &n.kind else {
            panic!("not a list")
        };
        assert_eq!(items[0].line, 1);
        assert_eq!(items[1].line, 4);
        let YKind::Map(m) = &items[1].kind else {
            panic!("not a map")
        };
        let YKind::Map(inner) = &m[0].1.kind else {
            panic!("not a map")
        };
        assert_eq!(inner[0].1.line, 5);
        assert_eq!(inner[0].1.as_str(), Some("8300"));
    }

    #[test]
    fn aliases_expand_and_bombs_stop() {
        let n = parse("a: &x [1, 2]\nb: *x\n").expect("parse");
        let YKind::Map(m) = &n.kind else {
            panic!("not a map")
        };
        assert_eq!(m[1].1.kind, m[0].1.kind);
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = (b'a' + i) as char;
            let next = (b'a' + i + 1) as char;
            bomb.push_str(&format!(
                "{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let e = parse(&bomb).expect_err("bomb");
        assert!(e.message.contains("more than"), "{e:?}");
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(&deep).expect_err("deep").message.contains("deeper"));
        assert!(parse("a: [").is_err());
    }
}
