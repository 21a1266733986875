//! Journald-friendly logging: one event per line on stderr, prefixed with a printk priority.
//!
//! systemd's journal reads a leading `<N>` as the syslog priority of the line
//! (`SyslogLevelPrefix=`, on by default, see systemd.exec(5)), so the same output is readable in a
//! terminal and filterable with `journalctl -p`. No colour, no multi-line records: a message that
//! contains newlines is folded so that one event stays one journal entry.

use std::fmt::Arguments;
use std::io::Write;

/// Syslog priorities as used by the kernel's printk and by journald.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

/// Writes one event. Errors writing to stderr are ignored on purpose: losing a log line must never
/// abort a deployment half way.
pub fn emit(level: Level, args: Arguments<'_>) {
    // One write(2) per event: stderr is unbuffered, and a line written in pieces can be split
    // by a child writing to the same stream, losing its priority prefix.
    // URLs are redacted here too, as a last line of defence: error texts of gix and curl may
    // quote the repository URL, userinfo included.
    let line = format!(
        "<{}>{}\n",
        level as u8,
        printable(&crate::repo_url::redact(
            &args.to_string().replace('\n', " | ")
        ))
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `text` with every control character (C0 but tab, DEL, C1) written as a `\u{..}` escape.
///
/// Log lines and operator output carry text that peers chose (a request line, a remote's stderr,
/// another machine's status JSON). Raw, an escape sequence in it would reach the operator's
/// terminal (ECMA-48 CSI/OSC: recolouring, retitling, even a clipboard write with OSC 52) or fake
/// a second journal line with a carriage return; escaped, it is harmless and still readable.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Text for the operator's terminal (stdout): secrets in URLs hidden, control characters
/// escaped ([`printable`]).
pub fn shown(text: &str) -> String {
    printable(&crate::repo_url::redact(text)).into_owned()
}

/// JSON text for stdout or another program: secrets in URLs hidden, and the control characters
/// `serde_json` leaves raw in strings (DEL and the C1 range, which some terminals obey as escape
/// sequences) written as `\u00XX` escapes, so the text stays the same JSON value.
pub fn shown_json(json: &str) -> String {
    let redacted = crate::repo_url::redact(json);
    let mut out = String::with_capacity(redacted.len());
    for c in redacted.chars() {
        if is_unsafe(c) && c != '\n' {
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

fn is_unsafe(c: char) -> bool {
    c != '\t' && c.is_control()
}

#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Error, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Warning, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! notice {
    ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Notice, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Info, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Debug, format_args!($($t)*)) };
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        assert_eq!(printable("plain text\twith tab"), "plain text\twith tab");
        assert_eq!(
            printable("a\u{1b}]52;c;aGk=\u{7}b\rc\u{9b}d"),
            "a\\u{1b}]52;c;aGk=\\u{7}b\\u{d}c\\u{9b}d"
        );
        assert_eq!(printable("grüße ✓"), "grüße ✓");
    }

    #[test]
    fn operator_output_hides_url_secrets_and_stays_valid_json() {
        assert_eq!(
            super::shown("from https://u:tok@h/x\u{1b}[2J"),
            "from https://***@h/x\\u{1b}[2J"
        );
        let value = serde_json::json!({"m": "a\u{9b}31mred\u{7f} https://u:tok@h/x", "n": 1});
        let text = super::shown_json(&serde_json::to_string_pretty(&value).unwrap());
        assert!(
            !text.contains('\u{9b}') && !text.contains('\u{7f}'),
            "{text}"
        );
        assert!(!text.contains("tok"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["m"], "a\u{9b}31mred\u{7f} https://***@h/x");
    }
}
