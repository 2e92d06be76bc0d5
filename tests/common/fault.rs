//! A fault proxy: a TCP proxy a test puts between an instance and RabbitMQ
//! or PostgreSQL, with the faults real networks have. It passes bytes,
//! delays them (latency and jitter, order kept), caps bandwidth,
//! blackholes connections (bytes dropped, sockets kept open: no RST, no
//! FIN), resets them, refuses new ones, and heals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What applies to every byte now.
#[derive(Debug, Clone, Default)]
struct Shape {
    latency: Duration,
    jitter: Duration,
    /// Bytes per second each way per connection; 0: no cap.
    bytes_per_sec: u64,
}

#[derive(Default)]
struct State {
    shape: Mutex<Shape>,
    refuse: AtomicBool,
    /// New connections are blackholed as they come.
    blackhole_new: AtomicBool,
    conns: Mutex<Vec<Conn>>,
}

struct Conn {
    blackholed: Arc<AtomicBool>,
    reset: watch::Sender<bool>,
}

pub struct FaultProxy {
    pub port: u16,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on an ephemeral port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(State::default());
        let upstream = upstream.to_string();
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if st.refuse.load(Ordering::SeqCst) {
                    rst(&client);
                    drop(client);
                    continue;
                }
                let blackholed = Arc::new(AtomicBool::new(st.blackhole_new.load(Ordering::SeqCst)));
                let (reset, reset_rx) = watch::channel(false);
                st.conns.lock().unwrap().push(Conn {
                    blackholed: blackholed.clone(),
                    reset,
                });
                let (st, upstream) = (st.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = server.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(
                        pump(cr, sw, st.clone(), blackholed.clone(), reset_rx.clone()),
                        pump(sr, cw, st, blackholed, reset_rx),
                    );
                });
            }
        });
        FaultProxy {
            port,
            state,
            accept,
        }
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every byte waits `latency` plus up to `jitter` more, each way.
    pub fn latency(&self, latency: Duration, jitter: Duration) {
        let mut shape = self.state.shape.lock().unwrap();
        shape.latency = latency;
        shape.jitter = jitter;
    }

    /// At most `bytes_per_sec` each way on each connection.
    pub fn bandwidth(&self, bytes_per_sec: u64) {
        self.state.shape.lock().unwrap().bytes_per_sec = bytes_per_sec;
    }

    /// Existing connections stop carrying bytes; their sockets stay open.
    /// New ones pass.
    pub fn blackhole(&self) {
        for c in self.state.conns.lock().unwrap().iter() {
            c.blackholed.store(true, Ordering::SeqCst);
        }
    }

    /// Existing and new connections carry nothing (a network gone dark:
    /// new connections open and then hear nothing).
    pub fn blackhole_all(&self) {
        self.state.blackhole_new.store(true, Ordering::SeqCst);
        self.blackhole();
    }

    /// Existing connections are reset (RST to both sides).
    pub fn reset(&self) {
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.reset.send(true);
        }
    }

    /// New connections are refused (reset as they come).
    pub fn refuse(&self) {
        self.state.refuse.store(true, Ordering::SeqCst);
    }

    /// Back to passing everything at full speed. Blackholed connections
    /// carry bytes again (what they lost stays lost).
    pub fn heal(&self) {
        *self.state.shape.lock().unwrap() = Shape::default();
        self.state.refuse.store(false, Ordering::SeqCst);
        self.state.blackhole_new.store(false, Ordering::SeqCst);
        let mut conns = self.state.conns.lock().unwrap();
        conns.retain(|c| !c.reset.is_closed());
        for c in conns.iter() {
            c.blackholed.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

/// Makes the socket's close a RST. A zero linger never blocks the drop,
/// which is what tokio's deprecation of `set_linger` warns of.
#[allow(deprecated)]
fn rst(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// Carries `from` to `to` as the proxy's state says, until either side
/// closes or the connection is reset.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    state: Arc<State>,
    blackholed: Arc<AtomicBool>,
    mut reset: watch::Receiver<bool>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut reset2 = reset.clone();
    let bh = blackholed.clone();
    let st = state.clone();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_due = Instant::now();
        loop {
            let n = tokio::select! {
                n = from.read(&mut buf) => n,
                _ = reset2.changed() => {
                    rst(from.as_ref());
                    return;
                }
            };
            let n = match n {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if bh.load(Ordering::SeqCst) {
                continue;
            }
            let shape = st.shape.lock().unwrap().clone();
            let extra = if shape.jitter.is_zero() {
                Duration::ZERO
            } else {
                shape.jitter.mul_f64(rand::rng().random_range(0.0..1.0))
            };
            // Order is kept: a chunk never overtakes the one before it.
            let due = (Instant::now() + shape.latency + extra).max(last_due);
            last_due = due;
            if tx.send((due, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let writer = async move {
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = reset.changed() => {
                    rst(to.as_ref());
                    return;
                }
            };
            let Some((due, chunk)) = next else { break };
            tokio::time::sleep_until(due).await;
            if blackholed.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
            let rate = state.shape.lock().unwrap().bytes_per_sec;
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64)).await;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
