//! Text from plugins on its way into the host's log: control characters are escaped, so a
//! plugin cannot forge log lines (a newline followed by a fake `ERROR`), rewrite the
//! terminal (ANSI escapes) or hide text (carriage returns). Lines read from a plugin's output
//! are bounded.
//!
//! This module only makes text safe to log; where plugin logs are forwarded (the logger
//! capability in [`crate::host::broker`], a launched plugin's stdout and stderr in
//! [`crate::process`]) is decided there.

use std::borrow::Cow;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest line of a plugin's stdout or stderr kept whole; the rest of a longer line is
/// dropped and the line marked as cut.
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;

/// `text` with every control character written as an escape (`\n`, `\r`, `\t`, `\u{1b}`).
/// Borrowed when there is nothing to escape, which is the usual case.
pub(crate) fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Reads one line of at most [`MAX_LINE_BYTES`] (without its line ending, invalid UTF-8
/// replaced); a longer line is cut there and the rest of it skipped. `None` at end of input or
/// on a read error.
pub(crate) async fn read_bounded_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Option<String> {
    let mut line = Vec::new();
    let mut cut = false;
    loop {
        let available = match reader.fill_buf().await {
            Ok([]) if line.is_empty() && !cut => return None,
            Ok([]) => break,
            Ok(available) => available,
            Err(_) => return None,
        };
        let (chunk, end) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        if chunk.len() > room {
            cut = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let consumed = end.unwrap_or(available.len());
        reader.consume(consumed);
        if end.is_some() {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(&line).into_owned();
    if cut {
        text.push_str(" [line cut]");
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(
            escape_control("plain: it's fine"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_control("ok\n2026-12-02T00:00:00Z ERROR forged\r\u{1b}[2J"),
            "ok\\n2026-12-02T00:00:00Z ERROR forged\\r\\u{1b}[2J"
        );
    }

    #[tokio::test]
    async fn lines_are_bounded_and_split() {
        let long = "x".repeat(MAX_LINE_BYTES + 100);
        let input = format!("one\r\n{long}\ntwo");
        let mut reader = tokio::io::BufReader::with_capacity(64, input.as_bytes());
        assert_eq!(read_bounded_line(&mut reader).await.as_deref(), Some("one"));
        let cut = read_bounded_line(&mut reader).await.unwrap();
        assert!(cut.ends_with(" [line cut]"));
        assert_eq!(cut.len(), MAX_LINE_BYTES + " [line cut]".len());
        assert_eq!(read_bounded_line(&mut reader).await.as_deref(), Some("two"));
        assert_eq!(read_bounded_line(&mut reader).await, None);
    }
}
