//! One tablet connection, whatever carries it: reads client messages from a
//! [`Transport`], feeds the decoded frames to the [`Session`], writes its
//! answers and the tablet's popups, and keeps heart-beats in both
//! directions. `/ws` (a WebSocket) and SockJS are two transports of it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::close::Close;
use super::frame::{Command, Decoder, Frame, Item, Version};
use super::session::{error_frame, Handshake, Session};
use crate::server::App;

/// A client must send CONNECT within this long.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// A write that takes longer means the tablet is gone.
const WRITE_WITHIN: Duration = Duration::from_secs(10);

/// What a transport received from the client.
#[derive(Debug)]
pub enum Inbound {
    /// Bytes of the STOMP stream (one or several frames, or a part of one).
    Data(Vec<u8>),
    /// Proof of life without data (a WebSocket ping or pong).
    Alive,
    /// The client is gone.
    Closed,
    /// The transport refused what the client sent (a message too large).
    Refused(Close),
}

/// A message channel to one client: text out, bytes in.
pub trait Transport: Send {
    /// The next thing from the client. Must be cancel-safe: the connection
    /// waits on it beside timers and the tablet's queue.
    fn recv(&mut self) -> impl Future<Output = Inbound> + Send;
    /// Sends one text message (a STOMP frame or a heart-beat EOL); false
    /// when the client is gone.
    fn send(&mut self, text: String) -> impl Future<Output = bool> + Send;
    /// Ends the connection from the server side.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
    /// Ends the connection for `why`, after its ERROR frame was sent: a
    /// transport with close codes sends [`Close::code`].
    fn end(&mut self, why: &Close) -> impl Future<Output = ()> + Send {
        let _ = why;
        self.close()
    }
    /// The session became a connected tablet.
    fn connected(&mut self) {}
}

/// Writes one frame as a text message.
async fn write<T: Transport>(transport: &mut T, frame: &Frame, version: Version) -> bool {
    let bytes = frame.encode(version);
    // Frames are built from strings, so this only checks, without a copy.
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    matches!(
        tokio::time::timeout(WRITE_WITHIN, transport.send(text)).await,
        Ok(true)
    )
}

/// Runs one tablet's STOMP session over `transport` until either side ends it.
pub async fn run<T: Transport>(mut transport: T, app: App, handshake: Handshake) {
    let mut session = Session::new(app.hub.clone(), app.bus.clone(), handshake);
    let mut decoder = Decoder::new(app.config.stomp.max_frame);
    let opened = Instant::now();
    let mut last_in = Instant::now();
    let mut last_out = Instant::now();
    let stop = app.shutdown.clone();
    // The session's own ERROR for its ending (it may carry a receipt-id).
    let mut error: Option<Frame> = None;

    let why: Close = 'conn: loop {
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
            inbound = transport.recv() => {
                let bytes = match inbound {
                    Inbound::Closed => break 'conn Close::Disconnected,
                    Inbound::Refused(why) => break 'conn why,
                    Inbound::Alive => {
                        last_in = Instant::now();
                        continue;
                    }
                    Inbound::Data(bytes) => bytes,
                };
                last_in = Instant::now();
                decoder.push(&bytes);
                loop {
                    let item = match decoder.next_item() {
                        Ok(Some(item)) => item,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::info!(error = %e, "closing a connection after a bad frame");
                            break 'conn Close::BadFrame(e);
                        }
                    };
                    let was_connect = matches!(&item, Item::Frame(f) if matches!(f.command, Command::Connect | Command::Stomp));
                    let step = session.handle(item).await;
                    if was_connect {
                        decoder.set_version(session.version());
                        if session.tablet().is_some() {
                            transport.connected();
                        }
                    }
                    if let Some(why) = step.close {
                        // The ERROR, if any, is written on the way out.
                        for f in step.send {
                            if f.command == Command::Error {
                                error = Some(f);
                            } else {
                                write(&mut transport, &f, session.version()).await;
                            }
                        }
                        break 'conn why;
                    }
                    for f in &step.send {
                        if !write(&mut transport, f, session.version()).await {
                            break 'conn Close::Disconnected;
                        }
                        last_out = Instant::now();
                    }
                    // Many frames in one message: let other tasks run.
                    tokio::task::coop::consume_budget().await;
                }
            }
            _ = woken => {
                let Some(t) = tablet else { continue };
                let (popups, closing) = t.take();
                for p in popups {
                    for f in session.popup(&p) {
                        if !write(&mut transport, &f, session.version()).await {
                            break 'conn Close::Disconnected;
                        }
                        last_out = Instant::now();
                    }
                }
                if let Some(reason) = closing {
                    break 'conn reason;
                }
            }
            _ = sleep => {
                let now = Instant::now();
                if read_deadline.is_some_and(|d| now >= d) {
                    break 'conn if tablet.is_none() {
                        Close::ConnectTimeout
                    } else {
                        Close::HeartbeatTimeout
                    };
                }
                if beat_due.is_some_and(|d| now >= d) {
                    if !matches!(tokio::time::timeout(WRITE_WITHIN, transport.send("\n".into())).await, Ok(true)) {
                        break 'conn Close::Disconnected;
                    }
                    last_out = now;
                }
            }
            _ = stop.cancelled(), if tablet.is_none() => break 'conn Close::ServerRestart,
        }
    };
    session.end();
    if let Some(f) = error.or_else(|| error_frame(&why, None)) {
        write(&mut transport, &f, session.version()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), transport.end(&why)).await;
}
