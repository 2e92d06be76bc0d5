//! The STOMP-over-WebSocket transport: upgrades `/ws`, feeds the session
//! decoded frames, writes its answers and the tablet's popups, and keeps
//! heart-beats in both directions.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use tokio::time::Instant;

use crate::server::App;
use crate::stomp::frame::{Command, Decoder, Frame, Item, Version};
use crate::stomp::session::{error_frame, Handshake, Session};

/// A client must send CONNECT within this long.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// A write that takes longer means the tablet is gone.
const WRITE_WITHIN: Duration = Duration::from_secs(10);
/// Largest WebSocket message read; larger STOMP frames inside it are
/// refused by the decoder with an ERROR naming the limit.
const MAX_MESSAGE: usize = 2 * 1024 * 1024;

pub async fn upgrade(
    State(app): State<App>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let header_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let url_token = query.get("access_token").cloned();
    ws.protocols(["v12.stomp", "v11.stomp", "v10.stomp"])
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| {
            let subprotocol = socket
                .protocol()
                .and_then(|p| p.to_str().ok())
                .and_then(Version::from_subprotocol);
            run(
                socket,
                app,
                Handshake {
                    subprotocol,
                    url_token,
                    header_token,
                },
            )
        })
}

/// Writes one frame as a text message.
async fn write(socket: &mut WebSocket, frame: &Frame, version: Version) -> bool {
    let bytes = frame.encode(version);
    // Frames are built from strings, so this only checks, without a copy.
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    matches!(
        tokio::time::timeout(WRITE_WITHIN, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

async fn run(mut socket: WebSocket, app: App, handshake: Handshake) {
    let mut session = Session::new(app.hub.clone(), handshake);
    let mut decoder = Decoder::new(app.config.stomp.max_frame);
    let opened = Instant::now();
    let mut last_in = Instant::now();
    let mut last_out = Instant::now();
    let stop = app.shutdown.clone();

    'conn: loop {
        let hb = session.heartbeat();
        let tablet = session.tablet().cloned();
        // The earliest moment something must happen without input.
        let read_deadline = match &tablet {
            None => Some(opened + CONNECT_WITHIN),
            Some(_) if !hb.expect_every.is_zero() => Some(last_in + hb.expect_every * 2),
            Some(_) => None,
        };
        let beat_due = (!hb.send_every.is_zero()).then(|| last_out + hb.send_every);
        let timer = [read_deadline, beat_due].into_iter().flatten().min();
        let woken = async {
            match &tablet {
                Some(t) => t.wake.notified().await,
                None => std::future::pending().await,
            }
        };
        let sleep = async {
            match timer {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };

        tokio::select! {
            msg = socket.recv() => {
                let bytes = match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break 'conn,
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        last_in = Instant::now();
                        continue;
                    }
                };
                last_in = Instant::now();
                decoder.push(&bytes);
                loop {
                    let item = match decoder.next_item() {
                        Ok(Some(item)) => item,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::info!(error = %e, "closing a connection after a bad frame");
                            let step = session.bad_frame(&e);
                            for f in &step.send {
                                write(&mut socket, f, session.version()).await;
                            }
                            break 'conn;
                        }
                    };
                    let was_connect = matches!(&item, Item::Frame(f) if matches!(f.command, Command::Connect | Command::Stomp));
                    let step = session.handle(item).await;
                    if was_connect {
                        decoder.set_version(session.version());
                    }
                    for f in &step.send {
                        if !write(&mut socket, f, session.version()).await {
                            break 'conn;
                        }
                        last_out = Instant::now();
                    }
                    if step.close {
                        break 'conn;
                    }
                }
            }
            _ = woken => {
                let Some(t) = tablet else { continue };
                let (popups, closing) = t.take();
                for p in popups {
                    for f in session.popup(&p) {
                        if !write(&mut socket, &f, session.version()).await {
                            break 'conn;
                        }
                        last_out = Instant::now();
                    }
                }
                if let Some(reason) = closing {
                    let f = session.closing(&reason);
                    write(&mut socket, &f, session.version()).await;
                    break 'conn;
                }
            }
            _ = sleep => {
                let now = Instant::now();
                if read_deadline.is_some_and(|d| now >= d) {
                    let (message, detail) = if tablet.is_none() {
                        ("not connected", "no CONNECT frame in time")
                    } else {
                        ("heart-beat timeout", "no frame or heart-beat from the client in twice the agreed interval")
                    };
                    write(&mut socket, &error_frame(message, detail, None), session.version()).await;
                    break 'conn;
                }
                if beat_due.is_some_and(|d| now >= d) {
                    if tokio::time::timeout(WRITE_WITHIN, socket.send(Message::Text("\n".into()))).await.is_err() {
                        break 'conn;
                    }
                    last_out = now;
                }
            }
            _ = stop.cancelled(), if tablet.is_none() => break 'conn,
        }
    }
    session.end();
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(None))).await;
}
