//! One tablet connection, whatever carries it: reads client messages from a
//! [`Transport`], feeds the decoded frames to the [`Session`], writes its
//! answers and the tablet's popups, and keeps heart-beats in both
//! directions. `/ws` (a WebSocket) and SockJS are two transports of it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::close::Close;
use super::frame::{Command, Decoder, Frame, Item, Version};
use super::session::{error_frame, Handshake, Session};
use crate::delivery::Delivery;
use crate::hub::Hub;
use crate::hub::Tablet;

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

/// What a connection waiting for something to do was woken by.
enum Wake {
    Inbound(Inbound),
    /// The tablet has popups (or a reason to close) queued.
    Popups,
    /// A heart-beat or a deadline is due.
    Timer,
    /// The instance is stopping (before CONNECT only: a tablet is told
    /// with its queue).
    Stop,
}

/// Waits for the next thing a connected tablet's connection must do. A
/// function of its own, so that its futures are gone while the
/// connection handles what woke it: the connection's future, held per
/// tablet for its whole life, stays small.
async fn next_wake<T: Transport>(
    transport: &mut T,
    tablet: &Tablet,
    timer: Option<Instant>,
) -> Wake {
    let sleep = async {
        match timer {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        inbound = transport.recv() => Wake::Inbound(inbound),
        _ = tablet.wake.notified() => Wake::Popups,
        _ = sleep => Wake::Timer,
    }
}

/// The same before CONNECT, when the instance stopping also ends the wait
/// (a tablet is told with its queue). Short-lived, so its future is boxed
/// by the caller rather than sized into every tablet's.
async fn next_wake_unconnected<T: Transport>(
    transport: &mut T,
    deadline: Instant,
    stop: &CancellationToken,
) -> Wake {
    tokio::select! {
        inbound = transport.recv() => Wake::Inbound(inbound),
        _ = tokio::time::sleep_until(deadline) => Wake::Timer,
        _ = stop.cancelled() => Wake::Stop,
    }
}

/// When the connection must act without input: the read deadline (CONNECT
/// not yet received, or the client's heart-beats missed) and the next
/// heart-beat to send.
fn deadlines(
    session: &Session,
    opened: Instant,
    last_in: Instant,
    last_out: Instant,
) -> (Option<Instant>, Option<Instant>) {
    let hb = session.heartbeat();
    let read = match session.tablet() {
        None => Some(opened + CONNECT_WITHIN),
        Some(_) if !hb.expect_every.is_zero() => Some(last_in + hb.expect_every * 2),
        Some(_) => None,
    };
    let beat = (!hb.send_every.is_zero()).then(|| last_out + hb.send_every);
    (read, beat)
}

/// What a tablet's connection needs of its instance.
#[derive(Clone)]
pub struct Parts {
    pub hub: Arc<Hub>,
    pub delivery: Arc<Delivery>,
    /// Cancelled when the instance starts to stop.
    pub stop: CancellationToken,
}

/// Runs one tablet's STOMP session over `transport` until either side ends it.
///
/// Not an `async fn`: such a function's future keeps its arguments apart
/// from the variables they are moved into, and this future lives as long
/// as the tablet (BENCHMARKS.md, "Memory per tablet"). The session is
/// built before the future, which holds it and the transport once.
pub fn run<T: Transport>(
    mut transport: T,
    parts: Parts,
    handshake: Handshake,
) -> impl Future<Output = ()> + Send {
    let Parts {
        hub,
        delivery,
        stop,
    } = parts;
    let max_frame = hub.config().stomp.max_frame;
    let mut session = Session::new(hub, delivery, handshake);
    async move {
        let opened = Instant::now();
        let mut last_in = Instant::now();
        let mut last_out = Instant::now();
        // The session's own ERROR for its ending (it may carry a receipt-id).
        let mut error: Option<Box<Frame>> = None;
        // Only while part of a frame waits: an idle tablet keeps none.
        let mut decoder: Option<Box<Decoder>> = None;

        // A panic (a bug) ends this connection alone: caught here, logged
        // within a budget, answered with ERROR and close 1011, and the
        // session's clean-up below still runs.
        let served = async {
            let why: Close = 'conn: loop {
                let tablet = session.tablet().cloned();
                let woke = match &tablet {
                    Some(t) => {
                        // The earliest moment something must happen without input.
                        let (read, beat) = deadlines(&session, opened, last_in, last_out);
                        let timer = [read, beat].into_iter().flatten().min();
                        next_wake(&mut transport, t, timer).await
                    }
                    None => {
                        Box::pin(next_wake_unconnected(
                            &mut transport,
                            opened + CONNECT_WITHIN,
                            &stop,
                        ))
                        .await
                    }
                };
                match woke {
                    Wake::Inbound(inbound) => {
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
                        let d = decoder.get_or_insert_with(|| {
                            let mut d = Decoder::new(max_frame);
                            d.set_version(session.version());
                            Box::new(d)
                        });
                        d.push(&bytes);
                        loop {
                            let item = match d.next_item() {
                                Ok(Some(item)) => item,
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::info!(error = %e, "closing a connection after a bad frame");
                                    break 'conn Close::BadFrame(e);
                                }
                            };
                            let was_connect = matches!(&item, Item::Frame(f) if matches!(f.command, Command::Connect | Command::Stomp));
                            let step = Box::pin(session.handle(item)).await;
                            if was_connect {
                                d.set_version(session.version());
                                if session.tablet().is_some() {
                                    transport.connected();
                                }
                            }
                            if let Some(why) = step.close {
                                // The ERROR, if any, is written on the way out.
                                for f in step.send {
                                    if f.command == Command::Error {
                                        error = Some(Box::new(f));
                                    } else {
                                        Box::pin(write(&mut transport, &f, session.version()))
                                            .await;
                                    }
                                }
                                break 'conn why;
                            }
                            for f in &step.send {
                                if !Box::pin(write(&mut transport, f, session.version())).await {
                                    break 'conn Close::Disconnected;
                                }
                                last_out = Instant::now();
                            }
                            // Many frames in one message: let other tasks run.
                            tokio::task::coop::consume_budget().await;
                        }
                        if decoder.as_ref().is_some_and(|d| d.is_idle()) {
                            decoder = None;
                        }
                    }
                    Wake::Popups => {
                        let Some(t) = tablet else { continue };
                        let (popups, closing) = t.take();
                        for p in popups {
                            for f in session.popup(&p) {
                                if !Box::pin(write(&mut transport, &f, session.version())).await {
                                    break 'conn Close::Disconnected;
                                }
                                last_out = Instant::now();
                            }
                        }
                        if let Some(reason) = closing {
                            break 'conn Close::from(reason);
                        }
                    }
                    Wake::Timer => {
                        let now = Instant::now();
                        let (read_deadline, beat_due) =
                            deadlines(&session, opened, last_in, last_out);
                        if read_deadline.is_some_and(|d| now >= d) {
                            break 'conn if tablet.is_none() {
                                Close::ConnectTimeout
                            } else {
                                Close::HeartbeatTimeout
                            };
                        }
                        if beat_due.is_some_and(|d| now >= d) {
                            if !matches!(
                                Box::pin(tokio::time::timeout(
                                    WRITE_WITHIN,
                                    transport.send("\n".into())
                                ))
                                .await,
                                Ok(true)
                            ) {
                                break 'conn Close::Disconnected;
                            }
                            last_out = now;
                        }
                    }
                    Wake::Stop => break 'conn Close::ServerRestart,
                }
            };
            why
        };
        let why = match AssertUnwindSafe(served).catch_unwind().await {
            Ok(why) => why,
            Err(_) => {
                // The panic hook has logged it (`log_budget::log_panics`).
                error = None;
                Close::Internal
            }
        };
        session.end();
        if let Some(f) = error.map(|f| *f).or_else(|| error_frame(&why, None)) {
            Box::pin(write(&mut transport, &f, session.version())).await;
        }
        let _ = Box::pin(tokio::time::timeout(
            Duration::from_secs(1),
            transport.end(&why),
        ))
        .await;
    }
}
