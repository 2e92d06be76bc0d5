//! A small STOMP-over-WebSocket test client on tokio-tungstenite, reading
//! frames with an independent parser so that the server's codec is not
//! checked against itself.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A received frame.
#[derive(Debug, Clone)]
pub struct Got {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Got {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

pub struct Client {
    pub ws: Socket,
    pending: String,
    /// Heart-beat EOLs received.
    pub beats: usize,
    pub protocol: Option<String>,
}

/// Splits `text` into complete frames (simple parser: these tests never
/// send NULs inside bodies), keeping any partial rest.
fn split_frames(pending: &mut String, beats: &mut usize) -> Vec<Got> {
    let mut out = Vec::new();
    loop {
        while pending.starts_with('\n') || pending.starts_with("\r\n") {
            let n = if pending.starts_with('\n') { 1 } else { 2 };
            pending.drain(..n);
            *beats += 1;
        }
        let Some(nul) = pending.find('\0') else { break };
        let raw: String = pending.drain(..=nul).collect();
        let raw = &raw[..raw.len() - 1];
        let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
        let mut lines = head.lines();
        let command = lines.next().unwrap_or("").to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(a, b)| (unescape(a), unescape(b)))
            .collect();
        out.push(Got {
            command,
            headers,
            body: body.to_string(),
        });
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("\\n", "\n")
        .replace("\\c", ":")
        .replace("\\r", "\r")
        .replace("\\\\", "\\")
}

impl Client {
    /// Opens a WebSocket; `protocol` is the subprotocol to ask for, if any.
    pub async fn open(url: &str, protocol: Option<&str>, bearer: Option<&str>) -> Client {
        let mut req = url.into_client_request().expect("request");
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
        }
        if let Some(b) = bearer {
            req.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {b}")).unwrap(),
            );
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket");
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string());
        Client {
            ws,
            pending: String::new(),
            beats: 0,
            protocol,
        }
    }

    /// A client on a WebSocket opened by the caller (from a chosen source
    /// address, say).
    pub fn from_socket(ws: Socket) -> Client {
        Client {
            ws,
            pending: String::new(),
            beats: 0,
            protocol: None,
        }
    }

    /// Opens a WebSocket with extra request headers (`Origin`, …).
    pub async fn open_with(url: &str, headers: &[(&str, &str)]) -> Client {
        let mut req = url.into_client_request().expect("request");
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket");
        Client {
            ws,
            pending: String::new(),
            beats: 0,
            protocol: None,
        }
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.try_send_raw(text).await.expect("send");
    }

    /// Sends, and leaves a failed write to the caller: a server may refuse a
    /// long message and close before the client has finished writing it.
    pub async fn try_send_raw(
        &mut self,
        text: &str,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::Text(text.into())).await
    }

    pub async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send");
    }

    /// The next frame, or `None` when the connection closed or nothing came
    /// within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Got> {
        match self.poll(within).await {
            Polled::Frame(f) => Some(f),
            Polled::Timeout | Polled::Closed => None,
        }
    }

    fn requeue(&mut self, f: Got) {
        let mut raw = f.command.clone();
        raw.push('\n');
        for (k, v) in &f.headers {
            raw.push_str(&format!(
                "{}:{}\n",
                k.replace('\\', "\\\\")
                    .replace(':', "\\c")
                    .replace('\n', "\\n"),
                v.replace('\\', "\\\\")
                    .replace(':', "\\c")
                    .replace('\n', "\\n")
            ));
        }
        raw.push('\n');
        raw.push_str(&f.body);
        raw.push('\0');
        self.pending.insert_str(0, &raw);
    }

    /// The next frame that is not a heart-beat; panics if none comes.
    pub async fn expect(&mut self, command: &str) -> Got {
        let got = self.next(Duration::from_secs(10)).await;
        match got {
            Some(f) if f.command == command => f,
            other => panic!("expected {command}, got {other:?}"),
        }
    }

    /// The close code the server ends the connection with (`None`: closed
    /// without a close frame, or nothing within 30 s).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Whether the server closes the connection within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub async fn connect(&mut self, token: &str) -> Got {
        self.send_raw(&format!(
            "CONNECT\naccept-version:1.2\nhost:bizcall\npasscode:{token}\nheart-beat:0,0\n\n\0"
        ))
        .await;
        self.expect("CONNECTED").await
    }

    pub async fn subscribe(&mut self, slug: &str, id: &str, ack: &str) {
        self.send_raw(&format!(
            "SUBSCRIBE\nid:{id}\ndestination:/topic/call-store/{slug}\nack:{ack}\nreceipt:r-{id}\n\n\0"
        ))
        .await;
        let r = self.expect("RECEIPT").await;
        assert_eq!(r.get("receipt-id"), Some(format!("r-{id}").as_str()));
    }
}

/// What waiting for a frame produced.
#[derive(Debug)]
pub enum Polled {
    Frame(Got),
    Timeout,
    Closed,
}

impl Client {
    /// Like `next`, but tells a quiet connection from a closed one.
    pub async fn poll(&mut self, within: Duration) -> Polled {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut frames = split_frames(&mut self.pending, &mut self.beats);
            if !frames.is_empty() {
                let first = frames.remove(0);
                for f in frames.into_iter().rev() {
                    self.requeue(f);
                }
                return Polled::Frame(first);
            }
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Polled::Timeout,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                    return Polled::Closed
                }
                Ok(Some(Ok(Message::Text(t)))) => self.pending.push_str(&t),
                Ok(Some(Ok(Message::Binary(b)))) => {
                    self.pending.push_str(&String::from_utf8_lossy(&b))
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Opens a connection, failing softly (for clients that reconnect).
    pub async fn try_open(url: &str) -> Option<Client> {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .ok()?
        .ok()?;
        Some(Client {
            ws,
            pending: String::new(),
            beats: 0,
            protocol: None,
        })
    }
}
