//! SockJS framing: what the server writes (`o`, `h`, `a[…]`, `c[…]`) and
//! how the client's JSON-encoded messages are read.

use std::fmt::Write as _;

/// The open frame, first on every new session.
pub const OPEN: &str = "o";
/// The heart-beat frame, after 25 s without other output.
pub const HEARTBEAT: &str = "h";

/// Why a session ends, as the close frame `c[code,"reason"]` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The server ended the session (the STOMP connection is over).
    GoAway,
    /// A second receiver asked for a session that has one.
    AnotherConnection,
    /// The receiver went away mid-request; messages may be lost.
    Interrupted,
}

impl Close {
    pub fn code(self) -> u16 {
        match self {
            Close::GoAway => 3000,
            Close::AnotherConnection => 2010,
            Close::Interrupted => 1002,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Close::GoAway => "Go away!",
            Close::AnotherConnection => "Another connection still open",
            Close::Interrupted => "Connection interrupted",
        }
    }

    /// The close frame.
    pub fn frame(self) -> String {
        format!("c[{},\"{}\"]", self.code(), self.reason())
    }
}

/// Writes `s` as a JSON string the way SockJS clients need it: beyond
/// JSON's own escapes, every character outside printable ASCII travels as
/// `\uXXXX`. Browsers and proxies mangle some of them on the XHR
/// transports (U+2028, U+FFFx, the zero-width marks…); escaping all of
/// them is a superset of sockjs's list, and the STOMP NUL goes as `\u0000`.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// The message frame `a["…","…"]` carrying `messages`.
pub fn messages<S: AsRef<str>>(messages: &[S]) -> String {
    let len: usize = messages.iter().map(|m| m.as_ref().len() + 3).sum();
    let mut out = String::with_capacity(len + 3);
    out.push_str("a[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, m.as_ref());
    }
    out.push(']');
    out
}

/// What a client's message payload could not be read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("Payload expected.")]
    Empty,
    #[error("Broken JSON encoding.")]
    BrokenJson,
}

/// Reads an `xhr_send` body: a JSON array of strings.
pub fn parse_array(body: &[u8]) -> Result<Vec<String>, PayloadError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::Empty);
    }
    serde_json::from_slice(body).map_err(|_| PayloadError::BrokenJson)
}

/// Reads a WebSocket message: a JSON array of strings or one string; an
/// empty message carries nothing.
pub fn parse_ws_message(text: &str) -> Result<Vec<String>, PayloadError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if text.starts_with('"') {
        return serde_json::from_str::<String>(text)
            .map(|s| vec![s])
            .map_err(|_| PayloadError::BrokenJson);
    }
    serde_json::from_str(text).map_err(|_| PayloadError::BrokenJson)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frames_escape_what_clients_mangle() {
        assert_eq!(messages(&["a", "b"]), r#"a["a","b"]"#);
        assert_eq!(messages::<&str>(&[]), "a[]");
        assert_eq!(
            messages(&["MESSAGE\nx:y\n\n{\"k\":\"\\\"}\0"]),
            r#"a["MESSAGE\u000ax:y\u000a\u000a{\"k\":\"\\\"}\u0000"]"#
        );
        // Line and paragraph separators, BOM, the U+FFFx block, Korean,
        // and a character outside the BMP as a surrogate pair.
        assert_eq!(
            messages(&["\u{2028}\u{feff}\u{fff0}가😀"]),
            r#"a["\u2028\ufeff\ufff0\uac00\ud83d\ude00"]"#
        );
        // Whatever is escaped decodes back to the same text.
        let s = "STOMP\u{0}\u{7f}\u{200c}\u{2060}é";
        let back: Vec<String> = serde_json::from_str(&messages(&[s])[1..]).unwrap();
        assert_eq!(back, [s]);
    }

    #[test]
    fn close_frames() {
        assert_eq!(Close::GoAway.frame(), r#"c[3000,"Go away!"]"#);
        assert_eq!(
            Close::AnotherConnection.frame(),
            r#"c[2010,"Another connection still open"]"#
        );
        assert_eq!(
            Close::Interrupted.frame(),
            r#"c[1002,"Connection interrupted"]"#
        );
    }

    #[test]
    fn client_payloads() {
        assert_eq!(parse_array(br#"["a","b"]"#).unwrap(), ["a", "b"]);
        assert_eq!(parse_array(b"[]").unwrap(), Vec::<String>::new());
        assert_eq!(parse_array(b""), Err(PayloadError::Empty));
        assert_eq!(parse_array(b"  \n"), Err(PayloadError::Empty));
        assert_eq!(parse_array(br#"["a"#), Err(PayloadError::BrokenJson));
        assert_eq!(parse_array(br#"[1]"#), Err(PayloadError::BrokenJson));
        assert_eq!(parse_array(br#"{"a":1}"#), Err(PayloadError::BrokenJson));
        assert_eq!(parse_array(b"\xff\xfe"), Err(PayloadError::BrokenJson));
        assert_eq!(parse_array(br#"["\u0000\ud83d\ude00"]"#).unwrap(), ["\0😀"]);
        // A lone surrogate is not text.
        assert_eq!(parse_array(br#"["\ud800"]"#), Err(PayloadError::BrokenJson));
        assert_eq!(parse_ws_message("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_ws_message("[]").unwrap(), Vec::<String>::new());
        assert_eq!(parse_ws_message(r#""x""#).unwrap(), ["x"]);
        assert_eq!(parse_ws_message(r#"["a","b"]"#).unwrap(), ["a", "b"]);
        assert_eq!(parse_ws_message(r#"["a"#), Err(PayloadError::BrokenJson));
    }
}
