//! The STOMP-over-WebSocket transport: upgrades `/ws` and carries the
//! tablet's connection (`stomp::connection`) over WebSocket messages.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::client_ip::ClientAddr;
use super::conn::Conn;
use crate::app::App;
use crate::stomp::close::Close;
use crate::stomp::connection::{self, Inbound, Transport};
use crate::stomp::frame::Version;
use crate::stomp::session::Handshake;

/// How much larger than `stomp.max_frame` a WebSocket message may be: a
/// frame fits in one message with room for end-of-lines around it. A frame
/// may still arrive over several messages.
const MESSAGE_SLACK: usize = 1024;

/// Bytes read from a tablet's socket at a time, and about the read buffer
/// each idle tablet keeps (twice this, once a frame was read). Tablets
/// send small frames (SUBSCRIBE, ACK, heart-beats); a larger one is read in
/// several steps (a CONNECT in about five). 1 KiB cost about 0.9 KiB more
/// per tablet (BENCHMARKS.md, "Memory per tablet").
pub const READ_BUFFER: usize = 64;

/// The largest WebSocket message read for a given `stomp.max_frame`.
pub fn max_message(max_frame: usize) -> usize {
    max_frame + MESSAGE_SLACK
}

/// Whether a log event may be written: the WebSocket library logs whole
/// frames (a CONNECT's `passcode` included) at `trace`, so its `trace`
/// events are never written, whatever `RUST_LOG` asks for.
pub fn loggable(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    let websocket = target.starts_with("tungstenite") || target.starts_with("tokio_tungstenite");
    !(websocket && *meta.level() == tracing::Level::TRACE)
}

/// The answer to a browser whose `Origin` is not in
/// `stomp.allowed_origins`, before any upgrade; `None` when it may go on.
pub fn refuse_origin(app: &App, headers: &HeaderMap) -> Option<Response> {
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if app.config.stomp.origin_allowed(origin) {
        return None;
    }
    tracing::info!(
        origin = ?origin,
        "tablet connection refused: origin not in stomp.allowed_origins"
    );
    Some((StatusCode::FORBIDDEN, "origin not allowed\n").into_response())
}

pub async fn upgrade(
    State(app): State<App>,
    Query(query): Query<HashMap<String, String>>,
    conn: Option<Extension<Arc<Conn>>>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    ws: WebSocketUpgrade,
) -> Response {
    let logins = app.logins.clone();
    if let Some(refused) = refuse_origin(&app, &headers) {
        return refused;
    }
    // Behind a trusted proxy the client is known only now: count the
    // connection against its share of not-yet-connected connections.
    let conn = conn.map(|Extension(c)| c);
    if let Some(conn) = &conn {
        if app.config.is_trusted_proxy(conn.peer.ip()) && !conn.pend_as(client) {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address\n",
            )
                .into_response();
        }
    }
    let header_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_token)
        .map(str::to_string);
    let url_token = query.get("access_token").cloned();
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let limit = max_message(app.config.stomp.max_frame);
    let handshake = Handshake {
        subprotocol: None,
        url_token,
        header_token,
        origin,
        client: Some(client),
        logins: Some(logins),
    };
    // One box for all the upgrade needs: the task axum spawns keeps what
    // its callback captured for the connection's whole life, so the
    // callback holds a pointer, not ~0.3 KB of fields (BENCHMARKS.md,
    // "Memory per tablet").
    let parts = connection::Parts {
        hub: app.hub.clone(),
        delivery: app.delivery.clone(),
        stop: app.shutdown.clone(),
    };
    let setup = Box::new((parts, conn, handshake));
    ws.protocols(["v12.stomp", "v11.stomp", "v10.stomp"])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let (parts, conn, mut handshake) = *setup;
            handshake.subprotocol = socket
                .protocol()
                .and_then(|p| p.to_str().ok())
                .and_then(Version::from_subprotocol);
            connection::run(
                WsTransport {
                    socket,
                    conn,
                    limit,
                },
                parts,
                handshake,
            )
        })
}

/// STOMP frames as WebSocket text messages.
pub struct WsTransport {
    pub socket: WebSocket,
    /// The TCP connection's accounting (absent when served otherwise).
    pub conn: Option<Arc<Conn>>,
    /// Largest message read.
    pub limit: usize,
}

impl Transport for WsTransport {
    async fn recv(&mut self) -> Inbound {
        match self.socket.recv().await {
            None | Some(Ok(Message::Close(_))) => Inbound::Closed,
            Some(Err(e)) => match e
                .into_inner()
                .downcast_ref::<tokio_tungstenite::tungstenite::Error>()
            {
                Some(tokio_tungstenite::tungstenite::Error::Capacity(_)) => {
                    Inbound::Refused(Close::MessageTooLarge { limit: self.limit })
                }
                _ => Inbound::Closed,
            },
            Some(Ok(Message::Text(t))) => Inbound::Data(t.as_bytes().to_vec()),
            Some(Ok(Message::Binary(b))) => Inbound::Data(b.to_vec()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Inbound::Alive,
        }
    }

    async fn send(&mut self, text: String) -> bool {
        self.socket.send(Message::Text(text.into())).await.is_ok()
    }

    async fn close(&mut self) {
        let _ = self.socket.send(Message::Close(None)).await;
    }

    async fn end(&mut self, why: &Close) {
        let frame = CloseFrame {
            code: why.code(),
            reason: why.reason().into(),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }

    fn connected(&mut self) {
        if let Some(c) = &self.conn {
            c.connected();
        }
    }
}
