//! SockJS's `websocket` transport: one WebSocket per session, every STOMP
//! frame in an `a[…]` frame, client messages as JSON-encoded strings, `h`
//! after 25 s of silence, and `c[…]` before the close.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::time::Instant;

use super::frame::{self, Close};
use super::session::HEARTBEAT_EVERY;
use crate::http::conn::Conn;
use crate::stomp::connection::{Inbound, Transport};

pub struct SockJsWs {
    socket: WebSocket,
    last_out: Instant,
    /// The client sent broken JSON: the connection is dropped, not closed.
    broken: bool,
    /// The TCP connection's accounting (absent when served otherwise).
    conn: Option<Arc<Conn>>,
}

impl SockJsWs {
    /// Opens the session: the `o` frame goes out at once.
    pub async fn open(mut socket: WebSocket, conn: Option<Arc<Conn>>) -> Option<Self> {
        socket.send(Message::Text(frame::OPEN.into())).await.ok()?;
        Some(SockJsWs {
            socket,
            last_out: Instant::now(),
            broken: false,
            conn,
        })
    }

    async fn write(&mut self, text: String) -> bool {
        self.last_out = Instant::now();
        self.socket.send(Message::Text(text.into())).await.is_ok()
    }
}

impl SockJsWs {
    /// The next client messages (possibly none: a keep-alive); `None` when
    /// the connection is over or sent broken JSON.
    pub async fn messages(&mut self) -> Option<Vec<String>> {
        loop {
            let beat_at = self.last_out + HEARTBEAT_EVERY;
            let msg = tokio::select! {
                m = self.socket.recv() => m,
                _ = tokio::time::sleep_until(beat_at) => {
                    if !self.write(frame::HEARTBEAT.into()).await {
                        return None;
                    }
                    continue;
                }
            };
            let text = match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Some(Vec::new()),
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(Message::Binary(b))) => match String::from_utf8(b.to_vec()) {
                    Ok(t) => t,
                    Err(_) => return None,
                },
            };
            // Broken JSON ends the connection at once, as sockjs does.
            let Ok(messages) = frame::parse_ws_message(&text) else {
                tracing::info!("dropping a SockJS WebSocket after broken JSON");
                self.broken = true;
                return None;
            };
            return Some(messages);
        }
    }

    /// The protocol suite's services: echo every message, or close at once.
    pub async fn serve_test(mut self, service: super::session::Service) {
        if service == super::session::Service::Echo {
            while let Some(messages) = self.messages().await {
                for m in messages {
                    if !self.send(m).await {
                        return;
                    }
                }
            }
        }
        self.close().await;
    }
}

impl Transport for SockJsWs {
    async fn recv(&mut self) -> Inbound {
        match self.messages().await {
            None => Inbound::Closed,
            Some(m) if m.is_empty() => Inbound::Alive,
            Some(m) => Inbound::Data(m.concat().into_bytes()),
        }
    }

    async fn send(&mut self, text: String) -> bool {
        self.write(frame::messages(&[text])).await
    }

    async fn close(&mut self) {
        if self.broken {
            return;
        }
        let _ = self.write(Close::GoAway.frame()).await;
        let close = CloseFrame {
            code: Close::GoAway.code(),
            reason: Close::GoAway.reason().into(),
        };
        let _ = self.socket.send(Message::Close(Some(close))).await;
    }

    /// A connected tablet no longer counts against its address's share of
    /// not-yet-connected connections, as on `/ws`.
    fn connected(&mut self) {
        if let Some(c) = &self.conn {
            c.connected();
        }
    }
}
