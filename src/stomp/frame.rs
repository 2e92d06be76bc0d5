//! The STOMP 1.0–1.2 frame codec: an incremental decoder that takes bytes
//! as WebSocket messages bring them (several frames in one message, or one
//! frame across several) and an encoder for the frames the server sends.
//!
//! Limits are enforced while reading, so a hostile peer can make us hold at
//! most `max_frame` bytes.

use std::fmt;

use bytes::{Buf, BytesMut};

/// Headers a frame may carry before it is refused.
pub const MAX_HEADERS: usize = 100;

/// The protocol versions the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }

    /// The version a WebSocket subprotocol names (`v12.stomp`, …).
    pub fn from_subprotocol(p: &str) -> Option<Self> {
        match p {
            "v10.stomp" => Some(Version::V1_0),
            "v11.stomp" => Some(Version::V1_1),
            "v12.stomp" => Some(Version::V1_2),
            _ => None,
        }
    }
}

/// Every command of STOMP 1.2, from either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    fn parse(s: &str) -> Option<Self> {
        Self::parse_bytes(s.as_bytes())
    }

    fn parse_bytes(s: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str().as_bytes() == s)
    }

    /// CONNECT, STOMP and CONNECTED headers are never escaped (1.2 spec).
    fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

/// One STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    /// In order of appearance; repeated names are kept, the first one wins.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(command: Command) -> Self {
        Frame {
            command,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of a header.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Serialises the frame for `version`, adding `content-length` to any
    /// frame with a body.
    pub fn encode(&self, version: Version) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.len());
        out.extend_from_slice(self.command.as_str().as_bytes());
        out.push(b'\n');
        let escape = version != Version::V1_0 && self.command.escapes_headers();
        let mut has_length = false;
        for (name, value) in &self.headers {
            has_length |= name == "content-length";
            write_header_part(&mut out, name, escape, version);
            out.push(b':');
            write_header_part(&mut out, value, escape, version);
            out.push(b'\n');
        }
        if !self.body.is_empty() && !has_length {
            out.extend_from_slice(b"content-length:");
            out.extend_from_slice(self.body.len().to_string().as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
        out
    }
}

fn write_header_part(out: &mut Vec<u8>, text: &str, escape: bool, version: Version) {
    if !escape {
        // Unescaped frames cannot carry these; drop them rather than break
        // the framing.
        out.extend(text.bytes().filter(|b| !matches!(b, b'\n' | b'\r' | b':')));
        return;
    }
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b':' => out.extend_from_slice(b"\\c"),
            b'\r' if version == Version::V1_2 => out.extend_from_slice(b"\\r"),
            b'\r' => {}
            b => out.push(b),
        }
    }
}

/// Why the decoder gave up. The connection is then closed with an ERROR
/// frame naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    UnknownCommand(String),
    BadEscape(String),
    BadHeader(String),
    TooManyHeaders,
    TooLarge { limit: usize },
    MissingNul,
    BadContentLength(String),
    NotUtf8,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::UnknownCommand(c) => write!(f, "unknown command {c:?}"),
            FrameError::BadEscape(s) => write!(f, "bad escape sequence in header {s:?}"),
            FrameError::BadHeader(s) => write!(f, "malformed header line {s:?}"),
            FrameError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} headers"),
            FrameError::TooLarge { limit } => write!(f, "frame larger than {limit} bytes"),
            FrameError::MissingNul => write!(f, "frame body not terminated by NUL"),
            FrameError::BadContentLength(s) => write!(f, "bad content-length {s:?}"),
            FrameError::NotUtf8 => write!(f, "command or headers are not UTF-8"),
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameError {
    /// A short summary for the ERROR frame's `message` header.
    pub fn summary(&self) -> &'static str {
        match self {
            FrameError::UnknownCommand(_) => "unknown command",
            FrameError::BadEscape(_) => "bad escape",
            FrameError::BadHeader(_) => "malformed header",
            FrameError::TooManyHeaders => "too many headers",
            FrameError::TooLarge { .. } => "frame too large",
            FrameError::MissingNul => "missing NUL",
            FrameError::BadContentLength(_) => "bad content-length",
            FrameError::NotUtf8 => "invalid UTF-8",
        }
    }
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    /// A bare end-of-line between frames.
    Heartbeat,
}

/// The command and headers of a frame whose body has not all arrived.
#[derive(Debug)]
struct Head {
    command: Command,
    headers: Vec<(String, String)>,
    content_length: Option<usize>,
    body_start: usize,
}

/// Incremental decoder for one connection. Consumed bytes are dropped from
/// the front of the buffer in constant time, so decoding costs time linear
/// in the input however it is split into items.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    head: Option<Head>,
    /// Where the next search for a terminator starts, so bytes arriving one
    /// at a time cost linear work, not quadratic.
    scanned: usize,
    max_frame: usize,
    version: Version,
}

impl Decoder {
    pub fn new(max_frame: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            head: None,
            scanned: 0,
            max_frame,
            version: Version::V1_2,
        }
    }

    /// Header escaping follows the negotiated version.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Nothing waits for the rest of a frame: the decoder can go (the
    /// connection keeps none while a tablet is idle).
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.head.is_none()
    }

    /// Bytes waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete item, `Ok(None)` when more bytes are needed.
    pub fn next_item(&mut self) -> Result<Option<Item>, FrameError> {
        if self.head.is_none() {
            // End-of-lines between frames are heart-beats.
            if self.buf.first() == Some(&b'\n') {
                self.consume(1);
                return Ok(Some(Item::Heartbeat));
            }
            if self.buf.starts_with(b"\r\n") {
                self.consume(2);
                return Ok(Some(Item::Heartbeat));
            }
            if self.buf[..] == b"\r"[..] {
                return Ok(None);
            }
            self.check_command_line()?;
            match self.find_head_end() {
                None => {
                    if self.buf.len() > self.max_frame {
                        return Err(FrameError::TooLarge {
                            limit: self.max_frame,
                        });
                    }
                    self.scanned = self.buf.len().saturating_sub(2);
                    return Ok(None);
                }
                Some((head_len, body_start)) => {
                    let head = self.parse_head(head_len, body_start)?;
                    self.scanned = body_start;
                    self.head = Some(head);
                }
            }
        }
        let Some(head) = self.head.as_ref() else {
            return Ok(None);
        };
        let end = match head.content_length {
            Some(len) => {
                // `parse_head` keeps the whole frame within `max_frame`, so
                // neither addition can overflow; checked all the same.
                let end = match head.body_start.checked_add(len) {
                    Some(end) if end < self.max_frame => end,
                    _ => {
                        return Err(FrameError::TooLarge {
                            limit: self.max_frame,
                        })
                    }
                };
                if self.buf.len() <= end {
                    return Ok(None);
                }
                if self.buf[end] != 0 {
                    return Err(FrameError::MissingNul);
                }
                end
            }
            None => match self.buf[self.scanned..].iter().position(|b| *b == 0) {
                Some(i) if self.scanned + i + 1 > self.max_frame => {
                    return Err(FrameError::TooLarge {
                        limit: self.max_frame,
                    });
                }
                Some(i) => self.scanned + i,
                None => {
                    if self.buf.len() > self.max_frame {
                        return Err(FrameError::TooLarge {
                            limit: self.max_frame,
                        });
                    }
                    self.scanned = self.buf.len();
                    return Ok(None);
                }
            },
        };
        let Some(head) = self.head.take() else {
            return Ok(None);
        };
        let body = self.buf[head.body_start..end].to_vec();
        self.consume(end + 1);
        Ok(Some(Item::Frame(Frame {
            command: head.command,
            headers: head.headers,
            body,
        })))
    }

    /// Refuses a frame as soon as its first line cannot be a command: the
    /// bytes so far must be the start of one (a garbage first byte is
    /// refused at once), and a complete line must be one.
    fn check_command_line(&self) -> Result<(), FrameError> {
        const LONGEST: usize = 12; // "UNSUBSCRIBE" and a CR
        let line_end = self.buf.iter().take(LONGEST + 1).position(|b| *b == b'\n');
        let line = match line_end {
            Some(end) => &self.buf[..end],
            None => &self.buf[..self.buf.len().min(LONGEST + 1)],
        };
        let refuse = || {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Err(FrameError::UnknownCommand(shorten(
                &String::from_utf8_lossy(line),
            )))
        };
        match line_end {
            Some(_) => {
                let name = line.strip_suffix(b"\r").unwrap_or(line);
                if Command::parse_bytes(name).is_none() {
                    return refuse();
                }
            }
            None => {
                // A command, possibly followed by the CR of a CRLF.
                let name = line.strip_suffix(b"\r").unwrap_or(line);
                let whole = name.len() < line.len();
                let fits = Command::ALL.iter().any(|c| {
                    let c = c.as_str().as_bytes();
                    if whole {
                        c == name
                    } else {
                        c.starts_with(name)
                    }
                });
                if !fits {
                    return refuse();
                }
            }
        }
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.scanned = 0;
    }

    /// Finds the blank line ending the headers: (head length, body start).
    fn find_head_end(&self) -> Option<(usize, usize)> {
        let from = self.scanned;
        let hay = &self.buf[from..];
        let mut i = 0;
        while let Some(p) = hay[i..].iter().position(|b| *b == b'\n') {
            let at = i + p;
            let rest = &hay[at + 1..];
            if rest.first() == Some(&b'\n') {
                return Some((from + at, from + at + 2));
            }
            if rest.starts_with(b"\r\n") {
                return Some((from + at, from + at + 3));
            }
            i = at + 1;
        }
        None
    }

    fn parse_head(&self, head_len: usize, body_start: usize) -> Result<Head, FrameError> {
        if body_start > self.max_frame {
            return Err(FrameError::TooLarge {
                limit: self.max_frame,
            });
        }
        let text = std::str::from_utf8(&self.buf[..head_len]).map_err(|_| FrameError::NotUtf8)?;
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let command_line = lines.next().unwrap_or("");
        let command = Command::parse(command_line)
            .ok_or_else(|| FrameError::UnknownCommand(shorten(command_line)))?;
        let escaped = self.version != Version::V1_0 && command.escapes_headers();
        let mut headers = Vec::new();
        for line in lines {
            if headers.len() == MAX_HEADERS {
                return Err(FrameError::TooManyHeaders);
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| FrameError::BadHeader(shorten(line)))?;
            let (name, value) = if escaped {
                (
                    unescape(name, self.version)?,
                    unescape(value, self.version)?,
                )
            } else {
                (name.to_string(), value.to_string())
            };
            headers.push((name, value));
        }
        let content_length = match headers.iter().find(|(n, _)| n == "content-length") {
            None => None,
            Some((_, v)) => {
                let len = v
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| FrameError::BadContentLength(shorten(v)))?;
                // The body and its NUL must fit after the head: compared
                // before any addition, so a length near usize::MAX is just
                // too large, not an overflow.
                if len >= self.max_frame - body_start {
                    return Err(FrameError::TooLarge {
                        limit: self.max_frame,
                    });
                }
                Some(len)
            }
        };
        Ok(Head {
            command,
            headers,
            content_length,
            body_start,
        })
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

fn unescape(s: &str, version: Version) -> Result<String, FrameError> {
    if !s.contains('\\') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('r') if version == Version::V1_2 => out.push('\r'),
            _ => return Err(FrameError::BadEscape(shorten(s))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Item>, FrameError> {
        let mut d = Decoder::new(65536);
        d.push(bytes);
        let mut out = Vec::new();
        while let Some(item) = d.next_item()? {
            out.push(item);
        }
        Ok(out)
    }

    fn one(bytes: &[u8]) -> Frame {
        match decode_all(bytes).unwrap().pop() {
            Some(Item::Frame(f)) => f,
            other => panic!("no frame: {other:?}"),
        }
    }

    #[test]
    fn simple_frame() {
        let f = one(b"SUBSCRIBE\nid:0\ndestination:/topic/a\n\n\0");
        assert_eq!(f.command, Command::Subscribe);
        assert_eq!(f.get("id"), Some("0"));
        assert_eq!(f.get("destination"), Some("/topic/a"));
        assert!(f.body.is_empty());
    }

    #[test]
    fn crlf_line_endings() {
        let f = one(b"SEND\r\ndestination:/q\r\n\r\nhi\0");
        assert_eq!(f.get("destination"), Some("/q"));
        assert_eq!(f.body, b"hi");
    }

    #[test]
    fn escapes_decode() {
        let f = one(b"SEND\na\\cb:c\\\\d\\ne\\rf\n\n\0");
        assert_eq!(f.get("a:b"), Some("c\\d\ne\rf"));
    }

    #[test]
    fn undefined_escape_is_an_error() {
        assert!(matches!(
            decode_all(b"SEND\na:\\t\n\n\0"),
            Err(FrameError::BadEscape(_))
        ));
        assert!(matches!(
            decode_all(b"SEND\na:x\\\n\n\0"),
            Err(FrameError::BadEscape(_))
        ));
    }

    #[test]
    fn connect_headers_are_not_unescaped() {
        let f = one(b"CONNECT\npasscode:a\\b\n\n\0");
        assert_eq!(f.get("passcode"), Some("a\\b"));
    }

    #[test]
    fn version_1_0_does_not_unescape() {
        let mut d = Decoder::new(1024);
        d.set_version(Version::V1_0);
        d.push(b"SEND\na:x\\ty\n\n\0");
        let Some(Item::Frame(f)) = d.next_item().unwrap() else {
            panic!()
        };
        assert_eq!(f.get("a"), Some("x\\ty"));
    }

    #[test]
    fn version_1_1_has_no_cr_escape() {
        let mut d = Decoder::new(1024);
        d.set_version(Version::V1_1);
        d.push(b"SEND\na:\\r\n\n\0");
        assert!(matches!(d.next_item(), Err(FrameError::BadEscape(_))));
    }

    #[test]
    fn repeated_headers_first_wins() {
        let f = one(b"SEND\nfoo:1\nfoo:2\n\n\0");
        assert_eq!(f.get("foo"), Some("1"));
        assert_eq!(f.headers.len(), 2);
    }

    #[test]
    fn content_length_allows_nul_in_body() {
        let f = one(b"SEND\ncontent-length:3\n\na\0b\0");
        assert_eq!(f.body, b"a\0b");
    }

    #[test]
    fn content_length_near_usize_max_is_too_large_not_a_panic() {
        let decode = |bytes: &[u8]| {
            let mut d = Decoder::new(1024);
            d.push(bytes);
            d.next_item()
        };
        for len in [
            "18446744073709551577".to_string(),
            usize::MAX.to_string(),
            (usize::MAX - 5).to_string(),
            "1024".to_string(),
        ] {
            let frame = format!("SEND\ncontent-length:{len}\n\nab\0");
            assert_eq!(
                decode(frame.as_bytes()),
                Err(FrameError::TooLarge { limit: 1024 }),
                "{len}"
            );
        }
        // The largest body that fits (head, body and NUL are 1,024 bytes),
        // and one byte more.
        let head_len = "SEND\ncontent-length:999\n\n".len();
        let fits = 1024 - head_len - 1;
        for (len, ok) in [(fits, true), (fits + 1, false)] {
            let mut frame = format!("SEND\ncontent-length:{len}\n\n").into_bytes();
            frame.extend(vec![b'x'; len]);
            frame.push(0);
            let got = decode(&frame);
            assert_eq!(got.is_ok(), ok, "{len}: {got:?}");
        }
    }

    #[test]
    fn content_length_must_end_in_nul() {
        assert_eq!(
            decode_all(b"SEND\ncontent-length:1\n\nab\0"),
            Err(FrameError::MissingNul)
        );
        assert!(matches!(
            decode_all(b"SEND\ncontent-length:x\n\n\0"),
            Err(FrameError::BadContentLength(_))
        ));
    }

    #[test]
    fn heartbeats_between_frames() {
        let items = decode_all(b"\n\r\nSEND\n\nx\0\n").unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], Item::Heartbeat);
        assert_eq!(items[1], Item::Heartbeat);
        assert!(matches!(items[2], Item::Frame(_)));
        assert_eq!(items[3], Item::Heartbeat);
    }

    #[test]
    fn several_frames_in_one_push_and_one_across_pushes() {
        let items = decode_all(b"SEND\n\na\0SEND\n\nb\0").unwrap();
        assert_eq!(items.len(), 2);
        let mut d = Decoder::new(1024);
        for b in b"SUBSCRIBE\nid:1\n\n\0" {
            assert!(d.next_item().unwrap().is_none() || *b == 0);
            d.push(&[*b]);
        }
        assert!(matches!(d.next_item().unwrap(), Some(Item::Frame(_))));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn unknown_command_and_bad_header() {
        assert_eq!(
            decode_all(b"HELLO\n\n\0"),
            Err(FrameError::UnknownCommand("HELLO".into()))
        );
        assert_eq!(
            decode_all(b"connect\n\n\0"),
            Err(FrameError::UnknownCommand("connect".into()))
        );
        assert!(matches!(
            decode_all(b"SEND\nnocolon\n\n\0"),
            Err(FrameError::BadHeader(_))
        ));
        // Known to be bad before the frame is complete.
        let mut d = Decoder::new(1024);
        d.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(d.next_item(), Err(FrameError::UnknownCommand(_))));
        let mut d = Decoder::new(1024);
        d.push(b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0b\x0c\x0d");
        assert!(matches!(d.next_item(), Err(FrameError::UnknownCommand(_))));
        let mut d = Decoder::new(1024);
        d.push(b"SUBSCR");
        assert_eq!(d.next_item(), Ok(None));
    }

    #[test]
    fn a_first_byte_that_starts_no_command_is_refused_at_once() {
        for garbage in [
            &b"\0\x01\x02\xff"[..],
            b"\0",
            b"x",
            b"{",
            b"CONNECTX",
            b"SEND\rX",
        ] {
            let mut d = Decoder::new(1024);
            d.push(garbage);
            assert!(
                matches!(d.next_item(), Err(FrameError::UnknownCommand(_))),
                "{garbage:?}"
            );
        }
        for partial in [
            &b"C"[..],
            b"CONN",
            b"CONNECT",
            b"CONNECT\r",
            b"\r",
            b"UNSUBSCRIBE\r",
        ] {
            let mut d = Decoder::new(1024);
            d.push(partial);
            assert_eq!(d.next_item(), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn many_items_in_one_push_are_all_decoded_and_consumed() {
        let mut d = Decoder::new(1024);
        let mut wire = vec![b'\n'; 100_000];
        for _ in 0..10_000 {
            wire.extend_from_slice(b"ACK\nid:1\n\n\0");
        }
        d.push(&wire);
        let (mut beats, mut frames) = (0, 0);
        while let Some(item) = d.next_item().unwrap() {
            match item {
                Item::Heartbeat => beats += 1,
                Item::Frame(_) => frames += 1,
            }
        }
        assert_eq!((beats, frames), (100_000, 10_000));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn limits() {
        let mut d = Decoder::new(1024);
        d.push(b"SEND\nh:");
        d.push(&vec![b'A'; 2000]);
        assert_eq!(d.next_item(), Err(FrameError::TooLarge { limit: 1024 }));
        let mut d = Decoder::new(1024);
        d.push(b"SEND\n\n");
        d.push(&vec![b'x'; 2000]);
        assert_eq!(d.next_item(), Err(FrameError::TooLarge { limit: 1024 }));
        let mut d = Decoder::new(1024);
        let mut whole = b"SEND\n\n".to_vec();
        whole.extend(vec![b'x'; 2000]);
        whole.push(0);
        d.push(&whole);
        assert_eq!(d.next_item(), Err(FrameError::TooLarge { limit: 1024 }));
        let mut d = Decoder::new(1024);
        d.push(b"SEND\ncontent-length:5000\n\n");
        assert_eq!(d.next_item(), Err(FrameError::TooLarge { limit: 1024 }));
        let mut many = b"SEND\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("h{i}:v\n").as_bytes());
        }
        many.extend_from_slice(b"\n\0");
        assert_eq!(decode_all(&many), Err(FrameError::TooManyHeaders));
        assert_eq!(decode_all(b"SEND\na:\xff\n\n\0"), Err(FrameError::NotUtf8));
    }

    #[test]
    fn encode_escapes_and_adds_length() {
        let f = Frame::new(Command::Message)
            .header("destination", "/a:b")
            .header("x", "1\n2\\")
            .with_body("{}");
        let bytes = f.encode(Version::V1_2);
        assert_eq!(
            bytes,
            b"MESSAGE\ndestination:/a\\cb\nx:1\\n2\\\\\ncontent-length:2\n\n{}\0"
        );
        let connected = Frame::new(Command::Connected).header("version", "1.2");
        assert_eq!(
            connected.encode(Version::V1_2),
            b"CONNECTED\nversion:1.2\n\n\0"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let mut d = Decoder::new(1024);
            d.push(&bytes);
            for _ in 0..bytes.len() + 1 {
                match d.next_item() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }

        #[test]
        fn frames_round_trip_through_any_split(
            frames in proptest::collection::vec(
                (
                    proptest::sample::select(vec![Command::Send, Command::Message, Command::Subscribe, Command::Ack, Command::Error]),
                    proptest::collection::vec(("[a-z:\\\\\n\r-]{1,8}", "[ -~\n\r:\\\\가]{0,12}"), 0..5),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                ),
                1..6,
            ),
            cuts in proptest::collection::vec(0usize..512, 0..8),
        ) {
            let frames: Vec<Frame> = frames
                .into_iter()
                .map(|(command, headers, body)| Frame { command, headers, body })
                .collect();
            let mut wire = Vec::new();
            for f in &frames {
                wire.extend(f.encode(Version::V1_2));
                wire.push(b'\n');
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.push(wire.len());
            cuts.sort();
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            let mut at = 0;
            for cut in cuts {
                d.push(&wire[at..cut]);
                at = cut;
                while let Some(item) = d.next_item().unwrap() {
                    if let Item::Frame(mut f) = item {
                        f.headers.retain(|(n, _)| n != "content-length");
                        got.push(f);
                    }
                }
            }
            let want: Vec<Frame> = frames
                .into_iter()
                .map(|mut f| { f.headers.retain(|(n, _)| n != "content-length"); f })
                .collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
