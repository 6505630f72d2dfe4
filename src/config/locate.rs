//! Where a problem is in the config text: the line of a key or of a syntax error, and the message
//! when toml gives none; and how problems are rendered as `file:line: key: why`.
use super::Problem;

pub(super) fn render_problems(origin: &str, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| {
            let place = match p.line {
                Some(line) => format!("{origin}:{line}"),
                None => origin.to_owned(),
            };
            match &p.key {
                Some(key) => format!("{place}: {key}: {}", p.message),
                None => format!("{place}: {}", p.message),
            }
        })
        .collect();
    format!("invalid config:\n  {}", lines.join("\n  "))
}

/// toml's message for a syntax error, or, where toml gives none (a key with no value at the very end,
/// as in a file cut short; a bare carriage return; a control character in a comment), what is at the
/// error, so the operator is never shown a location with nothing after it.
pub(super) fn syntax_message(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim_end();
    if !message.is_empty() {
        return message.to_owned();
    }
    match error.span().and_then(|span| text.get(span.start..)?.chars().next()) {
        Some(found) => format!("invalid TOML syntax at {found:?}"),
        None => "invalid TOML syntax: the text ends where more was expected".to_owned(),
    }
}

pub(super) fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key written at `offset` (its name or its value), for error messages.
pub(super) fn key_at_offset(text: &str, offset: usize) -> Option<String> {
    fn walk(table: &toml_edit::Table, prefix: &str, offset: usize) -> Option<String> {
        for (key, item) in table.iter() {
            let dotted = if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") };
            if let Some(inner) = item.as_table() {
                if let Some(found) = walk(inner, &dotted, offset) {
                    return Some(found);
                }
                continue;
            }
            let covers = |span: Option<std::ops::Range<usize>>| span.is_some_and(|span| span.contains(&offset));
            if covers(table.key(key).and_then(|k| k.span())) || covers(item.span()) {
                return Some(dotted);
            }
        }
        None
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    walk(doc.as_table(), "", offset)
}

/// Finds the line where a dotted key (or, failing that, its table) is written, for error messages.
pub(super) fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut span = None;
    for part in dotted.split('.') {
        match item.get(part) {
            Some(next) => {
                item = next;
                span = next.span().or(span);
            }
            None => break,
        }
    }
    span.map(|span| line_of_offset(text, span.start))
}
