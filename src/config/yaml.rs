//! A YAML document as a tree of nodes that remember their line and column.
//!
//! yaml-rust2's own `Yaml` type drops positions, so the tree is built here from the
//! parser's marked events. Aliases are rejected (a config should say things once) and
//! duplicate keys are reported, since YAML libraries silently keep one of them.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::ConfigError;

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar, as written (quotes removed).
    Scalar(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order: (key, value).
    Map(Vec<(Node, Node)>),
    /// An empty value, `~` or `null`.
    Null,
}

/// A node and its 1-based position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Content.
    pub kind: NodeKind,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

impl Node {
    /// The scalar text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// "a mapping", "a sequence", … for error messages.
    pub fn describe(&self) -> &'static str {
        match self.kind {
            NodeKind::Scalar(_) => "a scalar",
            NodeKind::Seq(_) => "a sequence",
            NodeKind::Map(_) => "a mapping",
            NodeKind::Null => "nothing",
        }
    }

    /// A `ConfigError` at this node.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            line: self.line,
            col: self.col,
            message: message.into(),
            hint: None,
        }
    }
}

/// Parses the first document of `text`; `Ok(None)` when there is no document at all.
pub fn parse_tree(text: &str) -> Result<Option<Node>, Vec<ConfigError>> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, false) {
        let m = e.marker();
        return Err(vec![ConfigError {
            line: m.line().max(1),
            col: m.col() + 1,
            message: format!("YAML syntax error: {}", e.info()),
            hint: None,
        }]);
    }
    if !builder.errors.is_empty() {
        return Err(builder.errors);
    }
    Ok(builder.root)
}

/// Receives marked events and assembles the tree with a stack of open collections;
/// an open mapping also holds the key still waiting for its value.
#[derive(Default)]
struct Builder {
    stack: Vec<(Node, Option<Node>)>,
    root: Option<Node>,
    errors: Vec<ConfigError>,
}

fn at(kind: NodeKind, mark: Marker) -> Node {
    // yaml-rust2 lines are 1-based, columns 0-based.
    Node {
        kind,
        line: mark.line().max(1),
        col: mark.col() + 1,
    }
}

impl Builder {
    /// Attaches a finished node to the open collection (or makes it the root).
    fn push(&mut self, node: Node) {
        let Some((parent, pending_key)) = self.stack.last_mut() else {
            if self.root.is_none() {
                self.root = Some(node);
            }
            return;
        };
        match &mut parent.kind {
            NodeKind::Seq(items) => items.push(node),
            // A mapping's events alternate key, value.
            NodeKind::Map(pairs) => match pending_key.take() {
                Some(key) => {
                    let mut node = node;
                    // An empty value is marked at the next token, often lines below;
                    // errors about it belong at its key.
                    if node.kind == NodeKind::Null && node.line != key.line {
                        (node.line, node.col) = (key.line, key.col);
                    }
                    pairs.push((key, node))
                }
                None => *pending_key = Some(node),
            },
            _ => {}
        }
    }

    /// Reports every key written twice in one mapping, at its second occurrence.
    fn check_duplicates(&mut self, pairs: &[(Node, Node)]) {
        for (i, (key, _)) in pairs.iter().enumerate() {
            let Some(name) = key.as_str() else { continue };
            if let Some((first, _)) = pairs[..i].iter().find(|(k, _)| k.as_str() == Some(name)) {
                self.errors
                    .push(key.error(format!("duplicate key `{name}` (first set on line {})", first.line)));
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, style, _, _) => {
                let is_null = style == TScalarStyle::Plain && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL");
                let kind = if is_null { NodeKind::Null } else { NodeKind::Scalar(value) };
                self.push(at(kind, mark));
            }
            Event::SequenceStart(..) => self.stack.push((at(NodeKind::Seq(Vec::new()), mark), None)),
            Event::MappingStart(..) => self.stack.push((at(NodeKind::Map(Vec::new()), mark), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((mut node, _)) = self.stack.pop() {
                    if let NodeKind::Map(pairs) = &node.kind {
                        self.check_duplicates(pairs);
                        // A block mapping's start event is marked after its first key;
                        // the mapping is where its first key is.
                        if let Some((key, _)) = pairs.first() {
                            if (key.line, key.col) < (node.line, node.col) {
                                (node.line, node.col) = (key.line, key.col);
                            }
                        }
                    }
                    self.push(node);
                }
            }
            Event::Alias(_) => {
                self.errors
                    .push(at(NodeKind::Null, mark).error("aliases (`*name`) are not supported; write the value out"));
                self.push(at(NodeKind::Null, mark));
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Node {
        match parse_tree(text) {
            Ok(Some(n)) => n,
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn positions_are_one_based() {
        let root = tree("a: 1\nb:\n  - x\n  - {c: d}\n");
        let NodeKind::Map(pairs) = &root.kind else { panic!("not a map") };
        assert_eq!((pairs[0].0.line, pairs[0].0.col), (1, 1));
        assert_eq!((pairs[0].1.line, pairs[0].1.col), (1, 4));
        let NodeKind::Seq(items) = &pairs[1].1.kind else {
            panic!("not a seq")
        };
        assert_eq!((items[0].line, items[0].col), (3, 5));
        let NodeKind::Map(inner) = &items[1].kind else {
            panic!("not a map")
        };
        assert_eq!(inner[0].1.as_str(), Some("d"));
        assert_eq!((inner[0].1.line, inner[0].1.col), (4, 9));
        assert_eq!((items[1].line, items[1].col), (4, 5));
        let root = tree("- a: 1\n  b: 2\n");
        let NodeKind::Seq(items) = &root.kind else { panic!("not a seq") };
        assert_eq!((root.line, root.col, items[0].line, items[0].col), (1, 1, 1, 3));
    }

    #[test]
    fn nulls_and_quoted_strings() {
        let root = tree("a:\nb: ~\nc: \"null\"\n");
        let NodeKind::Map(pairs) = &root.kind else { panic!("not a map") };
        assert_eq!(pairs[0].1.kind, NodeKind::Null);
        assert_eq!(pairs[1].1.kind, NodeKind::Null);
        assert_eq!(pairs[2].1.as_str(), Some("null"));
        assert_eq!((pairs[0].1.line, pairs[0].1.col), (1, 1));
    }

    #[test]
    fn empty_document_is_none() {
        assert_eq!(parse_tree(""), Ok(None));
        assert_eq!(parse_tree("# only a comment\n"), Ok(None));
    }

    #[test]
    fn syntax_error_has_position() {
        let errs = parse_tree("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.starts_with("YAML syntax error"), "{errs:?}");
        assert!(errs[0].line >= 1 && errs[0].col >= 1);
        let errs = parse_tree("a: b\n c: d\n").unwrap_err();
        assert_eq!(errs[0].line, 2, "{errs:?}");
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let errs = parse_tree("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].line, errs[0].col), (3, 1));
        assert!(errs[0].message.contains("first set on line 1"), "{errs:?}");
    }

    #[test]
    fn aliases_are_rejected() {
        let errs = parse_tree("a: &x 1\nb: *x\n").unwrap_err();
        assert_eq!((errs[0].line, errs[0].col), (2, 4));
        assert!(errs[0].message.contains("aliases"));
    }
}
