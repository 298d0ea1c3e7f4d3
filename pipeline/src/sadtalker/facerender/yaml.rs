//! A small reader for the block-style YAML subset SadTalker's renderer configs use
//! (`facerender.yaml`, `facerender_still.yaml`, the fixtures' `facerender_small.yaml`): nested
//! `key: value` maps by indentation, lists of scalars (`- item` lines or `[a, b]`), `#` comments.
//! Flow maps, nested flow lists, anchors and multi-line scalars are rejected with a typed error
//! instead of being misread.

use crate::{PipelineError, Result};
use std::collections::BTreeMap;

/// One parsed node.
#[derive(Debug, Clone, PartialEq)]
pub enum YamlNode {
    Scalar(String),
    List(Vec<String>),
    Map(BTreeMap<String, YamlNode>),
}

impl YamlNode {
    /// The child at a dotted path (`model_params.generator_params.block_expansion`).
    pub fn get(&self, path: &str) -> Option<&YamlNode> {
        path.split('.').try_fold(self, |node, key| match node {
            YamlNode::Map(m) => m.get(key),
            _ => None,
        })
    }

    pub fn as_scalar(&self) -> Option<&str> {
        match self {
            YamlNode::Scalar(s) => Some(s),
            _ => None,
        }
    }
}

fn err(line_no: usize, reason: impl Into<String>) -> PipelineError {
    PipelineError::InvalidOption { field: "facerender_config", reason: format!("line {line_no}: {}", reason.into()) }
}

/// Remove a trailing `# comment` (a `#` at the start or after whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut in_quote: Option<char> = None;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match in_quote {
            Some(q) if c == q => in_quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => in_quote = Some(c),
            None if c == '#' && prev_space => return &line[..i],
            None => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

/// One meaningful line: indentation and content.
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

/// Parse a document whose top level is a map.
pub fn parse(text: &str) -> Result<YamlNode> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        if raw.contains('\t') {
            return Err(err(no, "tabs are not allowed for indentation"));
        }
        let content = strip_comment(raw).trim_end();
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed == "---" {
            continue;
        }
        lines.push(Line { no, indent: content.len() - trimmed.len(), text: trimmed });
    }
    let mut pos = 0;
    let node = parse_block(&lines, &mut pos, 0)?;
    if let Some(line) = lines.get(pos) {
        return Err(err(line.no, "unexpected indentation"));
    }
    Ok(node)
}

/// Parse the block starting at `lines[*pos]` whose lines are indented exactly `indent`.
fn parse_block(lines: &[Line<'_>], pos: &mut usize, indent: usize) -> Result<YamlNode> {
    let Some(first) = lines.get(*pos) else { return Ok(YamlNode::Map(BTreeMap::new())) };
    if first.text.starts_with("- ") || first.text == "-" {
        let mut items = Vec::new();
        while let Some(line) = lines.get(*pos) {
            if line.indent != indent || !(line.text.starts_with("- ") || line.text == "-") {
                break;
            }
            let item = line.text[1..].trim();
            if item.is_empty() || item.contains(": ") || item.ends_with(':') {
                return Err(err(line.no, "only lists of scalars are supported"));
            }
            items.push(unquote(item));
            *pos += 1;
        }
        return Ok(YamlNode::List(items));
    }
    let mut map = BTreeMap::new();
    while let Some(line) = lines.get(*pos) {
        if line.indent < indent {
            break;
        }
        if line.indent > indent {
            return Err(err(line.no, "unexpected indentation"));
        }
        let (key, value) = match line.text.split_once(':') {
            Some((k, v)) if v.is_empty() || v.starts_with(' ') => (unquote(k), v.trim()),
            _ => return Err(err(line.no, format!("expected `key: value`, found `{}`", line.text))),
        };
        if let Some(inner) = value.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(|| err(line.no, "unterminated `[` list"))?;
            if inner.contains(['[', ']', '{', '}']) {
                return Err(err(line.no, "nested flow collections are not supported"));
            }
            let items = inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(unquote).collect();
            *pos += 1;
            if map.insert(key.clone(), YamlNode::List(items)).is_some() {
                return Err(err(line.no, format!("duplicate key `{key}`")));
            }
            continue;
        }
        if value.starts_with(['{', '&', '*', '|', '>']) {
            return Err(err(line.no, format!("unsupported YAML construct in `{}`", line.text)));
        }
        *pos += 1;
        let node = if value.is_empty() {
            match lines.get(*pos) {
                Some(next) if next.indent > indent => parse_block(lines, pos, next.indent)?,
                // A list may sit at the key's own indentation.
                Some(next) if next.indent == indent && next.text.starts_with('-') => parse_block(lines, pos, indent)?,
                _ => YamlNode::Scalar(String::new()),
            }
        } else {
            YamlNode::Scalar(unquote(value))
        };
        if map.insert(key.clone(), node).is_some() {
            return Err(err(line.no, format!("duplicate key `{key}`")));
        }
    }
    Ok(YamlNode::Map(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_maps_lists_and_comments() {
        let doc = "a:\n  b: 3   # three\n  c:\n    - 1\n    - 2\n  d: True\ne: 'x # y'\nf: [1, 'b']\n";
        let root = parse(doc).unwrap();
        assert_eq!(root.get("a.b").and_then(YamlNode::as_scalar), Some("3"));
        assert_eq!(root.get("a.c"), Some(&YamlNode::List(vec!["1".into(), "2".into()])));
        assert_eq!(root.get("a.d").and_then(YamlNode::as_scalar), Some("True"));
        assert_eq!(root.get("e").and_then(YamlNode::as_scalar), Some("x # y"));
        assert!(root.get("a.z").is_none());
        assert_eq!(root.get("f"), Some(&YamlNode::List(vec!["1".into(), "b".into()])));
    }

    #[test]
    fn malformed_documents_are_errors() {
        for doc in
            ["a:\n   b: 1\n  c: 2\n", "a: {b: 1}\n", "a: [[1]]\n", "a: [1\n", "a\n", "a: 1\na: 2\n", "a:\n\tb: 1\n"]
        {
            assert!(parse(doc).is_err(), "{doc:?} should be rejected");
        }
    }
}
