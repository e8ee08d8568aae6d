//! Text from the cluster made safe for a terminal. Bodies, names and error messages are
//! chosen by other users (or relayed by a server), and a terminal obeys control
//! characters: ESC sequences clear the screen or retitle the window, `\r` rewrites the
//! line, and a newline lets a body print a line of its own ("#999 from admin: ...").
//!
//! The rule: every character a terminal could act on instead of printing is shown as a
//! visible escape, so one printed line is always one line of output and reads as what
//! was sent. Newlines in bodies are escaped too (`\n`), not kept: a kept newline, even
//! indented, is a line the sender wrote; scripts that want the exact text use `--json`.
//! Escaped: C0 controls and DEL (`\n`, `\r`, `\t`, `\x1b`, ...), C1 controls (`\u{9b}`,
//! which some terminals treat as CSI), the Unicode line and paragraph separators, and
//! the bidirectional overrides that reorder how a line displays ("Trojan Source").
//! A backslash is doubled, so an escape in the output was always a character in the
//! input, never text typed to look like one.

use std::fmt::Write;

/// `text` with every character a terminal could act on shown as a visible escape.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe_unicode(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// A JSON document with the characters JSON allows raw in strings but a terminal may act
/// on (C1 controls, separators, bidi overrides) written as `\uXXXX` escapes. The result
/// decodes to the same value: such characters can only occur inside strings, and
/// serde_json already escapes C0 controls.
pub fn escape_json(document: &str) -> String {
    let mut out = String::with_capacity(document.len());
    for c in document.chars() {
        if is_unsafe_unicode(c) {
            // All of them are in the Basic Multilingual Plane: one `\u` escape each.
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// Non-ASCII characters a terminal may act on, or that change how a line displays.
fn is_unsafe_unicode(c: char) -> bool {
    matches!(
        c,
        '\u{80}'..='\u{9f}'              // C1 controls (U+009B is CSI on some terminals)
            | '\u{61c}'                  // Arabic letter mark
            | '\u{200e}' | '\u{200f}'    // left-to-right and right-to-left marks
            | '\u{2028}' | '\u{2029}'    // line and paragraph separators
            | '\u{202a}'..='\u{202e}'    // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}' // bidi isolates
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        for text in [
            "hello, world",
            "héllo wörld ✓ 日本語",
            "",
            "#1 from bob: hi",
        ] {
            assert_eq!(escape(text), text);
        }
    }

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        assert_eq!(escape("\x1b]0;title\x07"), "\\x1b]0;title\\x07");
        assert_eq!(escape("\x1b[2J"), "\\x1b[2J");
        assert_eq!(escape("a\rb"), "a\\rb");
        assert_eq!(
            escape("ok\n#999 from admin: hi"),
            "ok\\n#999 from admin: hi"
        );
        assert_eq!(escape("\t\0\x7f"), "\\t\\x00\\x7f");
        assert_eq!(escape("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("x\u{2028}y"), "x\\u{2028}y");
    }

    #[test]
    fn escapes_cannot_be_forged() {
        // A sender who types a backslash sequence gets it shown doubled.
        assert_eq!(escape("\\x1b[2J"), "\\\\x1b[2J");
        assert_ne!(escape("\\n"), escape("\n"));
    }

    #[test]
    fn every_output_is_one_line_of_printable_characters() {
        let nasty: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let escaped = escape(&nasty);
        assert!(!escaped
            .chars()
            .any(|c| c.is_control() || is_unsafe_unicode(c)));
    }

    #[test]
    fn json_stays_valid_and_decodes_to_the_same_text() {
        let body = "\u{9b}2J \u{202e}evil\u{2029} \x1b[2J \"q\" \\ ok";
        let document = serde_json::json!({ "body": body }).to_string();
        let escaped = escape_json(&document);
        assert!(!escaped
            .chars()
            .any(|c| c.is_control() || is_unsafe_unicode(c)));
        let decoded: serde_json::Value = serde_json::from_str(&escaped).expect("valid JSON");
        assert_eq!(decoded["body"], body);
    }
}
