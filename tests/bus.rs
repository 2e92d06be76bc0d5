//! One set of behaviour tests run against both buses: the in-process bus
//! and RabbitMQ (the real broker on 127.0.0.1:5672). Plus the RabbitMQ
//! bus's own rules: retry with backoff, poison messages, ack modes, each
//! run with both routings (`amqp.routing` fanout and store), and store
//! routing's binding and unbinding.

mod common;

use bizcall::call::BusEvent;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bizcall::bus::local::LocalBus;
use bizcall::bus::{Bus, BusState, EventHandler, HandleError, Handled, Interest};
use bizcall::call::{CallEvent, CallStatus, EventKind};
use bizcall::config::{AckMode, Config, Routing};
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

/// What the test handler does with each event.
#[derive(Clone, Copy)]
enum Behaviour {
    Accept,
    /// Fails every time.
    Fail,
    /// Holds the popup until the test acknowledges it.
    AwaitAck,
}

struct Recorder {
    behaviour: Behaviour,
    seen: mpsc::UnboundedSender<(CallEvent, Instant)>,
    acks: Mutex<Vec<oneshot::Sender<()>>>,
    /// Stores the bus asked to replay (store routing bound them).
    replays: Mutex<Vec<String>>,
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, event: CallEvent) -> Result<Handled, HandleError> {
        let _ = self.seen.send((event, Instant::now()));
        match self.behaviour {
            Behaviour::Accept => Ok(Handled::Done),
            Behaviour::Fail => Err(HandleError::Unavailable("test handler fails")),
            Behaviour::AwaitAck => {
                let (tx, rx) = oneshot::channel();
                self.acks.lock().unwrap().push(tx);
                Ok(Handled::AwaitingAck(rx))
            }
        }
    }

    async fn replay(&self, stores: &[String]) {
        self.replays.lock().unwrap().extend(stores.iter().cloned());
    }
}

fn recorder(
    behaviour: Behaviour,
) -> (Arc<Recorder>, mpsc::UnboundedReceiver<(CallEvent, Instant)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Arc::new(Recorder {
            behaviour,
            seen: tx,
            acks: Mutex::new(Vec::new()),
            replays: Mutex::new(Vec::new()),
        }),
        rx,
    )
}

fn event(id: &str, store: &str, ttl: Duration) -> CallEvent {
    let now = Utc::now();
    CallEvent {
        kind: EventKind::Call,
        call_id: id.into(),
        store: store.into(),
        status: CallStatus::Ringing,
        caller_number: "01012345678".into(),
        virtual_number: Some("05012345678".into()),
        started_at: now,
        answered_at: None,
        ended_at: None,
        published_at: now,
        expires_at: now + chrono::Duration::from_std(ttl).unwrap(),
        published_us: None,
    }
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<(CallEvent, Instant)>) -> (CallEvent, Instant) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10s")
        .expect("handler alive")
}

async fn nothing_more(rx: &mut mpsc::UnboundedReceiver<(CallEvent, Instant)>) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.try_recv().is_err(), "no further event");
}

/// The contract every bus meets. `everything`: the bus delivers every
/// store's events here (all but store routing, which delivers only the
/// stores followed: "s1").
async fn contract(
    bus: Arc<dyn Bus>,
    mut rx: mpsc::UnboundedReceiver<(CallEvent, Instant)>,
    everything: bool,
) {
    assert_eq!(bus.state(), BusState::Up);
    // Events arrive whole and in order.
    for i in 0..20 {
        bus.publish(&BusEvent::Call(event(
            &format!("c{i}"),
            "s1",
            Duration::from_secs(30),
        )))
        .await
        .expect("published");
    }
    for i in 0..20 {
        let (ev, _) = recv(&mut rx).await;
        assert_eq!(ev.call_id, format!("c{i}"));
        assert_eq!(ev.store, "s1");
    }
    // Another store's event arrives only where every event does.
    bus.publish(&BusEvent::Call(event(
        "elsewhere",
        "s9",
        Duration::from_secs(30),
    )))
    .await
    .expect("published");
    if everything {
        assert_eq!(recv(&mut rx).await.0.call_id, "elsewhere");
    }
    // An event already past its expiry is never handed over.
    let mut stale = event("stale", "s1", Duration::from_secs(30));
    stale.expires_at = Utc::now() - chrono::Duration::seconds(1);
    let _ = bus.publish(&BusEvent::Call(stale.clone())).await;
    bus.publish(&BusEvent::Call(event(
        "fresh",
        "s1",
        Duration::from_secs(30),
    )))
    .await
    .unwrap();
    assert_eq!(recv(&mut rx).await.0.call_id, "fresh");
    nothing_more(&mut rx).await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_bus_meets_the_contract() {
    let (handler, rx) = recorder(Behaviour::Accept);
    contract(Arc::new(LocalBus::start(handler)), rx, true).await;
}

/// A RabbitMQ bus with `routing`, up; with store routing it follows
/// `follows` and returns once the broker confirmed their bindings (the bus
/// then asks the handler to replay them).
async fn amqp_bus(
    broker: &common::Broker,
    routing: Routing,
    follows: &[&str],
    tweak: impl FnOnce(&mut Config),
    handler: Arc<Recorder>,
) -> Arc<dyn Bus> {
    let mut config = Config::default();
    broker.apply(&mut config);
    config.amqp.routing = routing;
    tweak(&mut config);
    let bus = bizcall::bus::amqp::AmqpBus::start(&config, handler.clone())
        .await
        .expect("bus starts");
    common::eventually(Duration::from_secs(10), "bus up", || {
        let up = bus.state() == BusState::Up;
        async move { up }
    })
    .await;
    if routing == Routing::Store {
        for store in follows {
            bus.interest(Interest::Follow(store.to_string()));
        }
        common::eventually(Duration::from_secs(10), "stores bound", || {
            let replayed = handler.replays.lock().unwrap().clone();
            let bound = follows.iter().all(|s| replayed.iter().any(|r| r == s));
            async move { bound }
        })
        .await;
    }
    bus
}

/// Where a foreign publisher reaches the bus for store `s`.
fn raw_target(broker: &common::Broker, routing: Routing) -> (String, &'static str) {
    match routing {
        Routing::Fanout => (broker.exchange.clone(), ""),
        Routing::Store => (broker.routed_exchange(), "s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_bus_meets_the_contract() {
    for routing in [Routing::Fanout, Routing::Store] {
        let broker = common::Broker::new();
        let (handler, rx) = recorder(Behaviour::Accept);
        let bus = amqp_bus(&broker, routing, &["s1"], |_| {}, handler).await;
        contract(bus, rx, routing == Routing::Fanout).await;
        broker.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rabbitmq_instance_gets_every_event() {
    let broker = common::Broker::new();
    let (h1, mut rx1) = recorder(Behaviour::Accept);
    let (h2, mut rx2) = recorder(Behaviour::Accept);
    let a = amqp_bus(&broker, Routing::Fanout, &[], |_| {}, h1).await;
    let b = amqp_bus(&broker, Routing::Fanout, &[], |_| {}, h2).await;
    a.publish(&BusEvent::Call(event("x1", "s", Duration::from_secs(30))))
        .await
        .unwrap();
    b.publish(&BusEvent::Call(event("x2", "s", Duration::from_secs(30))))
        .await
        .unwrap();
    for rx in [&mut rx1, &mut rx2] {
        let mut ids = vec![recv(rx).await.0.call_id, recv(rx).await.0.call_id];
        ids.sort();
        assert_eq!(ids, ["x1", "x2"]);
        nothing_more(rx).await;
    }
    // One exclusive, auto-delete queue per bus, gone once they stop.
    let queues = common::list_queues(&broker.prefix, &["exclusive", "auto_delete"]);
    assert_eq!(queues.len(), 2, "{queues:?}");
    for q in &queues {
        assert_eq!(&q[1..], ["true", "true"], "{q:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
    common::eventually(Duration::from_secs(10), "queues deleted", || async {
        common::list_queues(&broker.prefix, &[]).is_empty()
    })
    .await;
    broker.cleanup().await;
}

async fn retried_with_backoff_then_dead_lettered(routing: Routing) {
    let broker = common::Broker::new();
    let (handler, mut rx) = recorder(Behaviour::Fail);
    let bus = amqp_bus(
        &broker,
        routing,
        &["s"],
        |c| {
            c.amqp.dead_letter = true;
            // Attempts in all, the first included: the first try and two retries.
            c.amqp.retry_max_attempts = 3;
            c.amqp.retry_initial_interval = Duration::from_millis(300);
            c.amqp.retry_multiplier = 2.0;
            c.amqp.retry_max_interval = Duration::from_secs(5);
        },
        handler,
    )
    .await;
    bus.publish(&BusEvent::Call(event("r1", "s", Duration::from_secs(30))))
        .await
        .unwrap();
    let (_, t0) = recv(&mut rx).await;
    let (_, t1) = recv(&mut rx).await;
    let (_, t2) = recv(&mut rx).await;
    // The first try and two retries, 300 ms then 600 ms apart at least.
    assert!(t1 - t0 >= Duration::from_millis(300), "{:?}", t1 - t0);
    assert!(t2 - t1 >= Duration::from_millis(600), "{:?}", t2 - t1);
    nothing_more(&mut rx).await;
    common::eventually(Duration::from_secs(10), "dead-lettered", || async {
        broker.dlq_depth().await == 1
    })
    .await;

    // A poison message goes straight to the dead-letter queue, and the
    // consumer keeps going.
    let (exchange, key) = raw_target(&broker, routing);
    broker
        .publish_raw_to(&exchange, key, b"this is not a call event")
        .await;
    broker
        .publish_raw_to(&exchange, key, b"{\"type\":\"call\"}")
        .await;
    common::eventually(Duration::from_secs(10), "poison dead-lettered", || async {
        broker.dlq_depth().await == 3
    })
    .await;
    assert!(rx.try_recv().is_err(), "poison never reaches the handler");

    let mut config = Config::default();
    broker.apply(&mut config);
    let dead = bizcall::bus::amqp::dlq::list(&config).await.unwrap();
    assert_eq!(dead.len(), 3);
    assert_eq!(dead[0].call_id, "r1");
    assert!(dead.iter().all(|d| d.reason == "rejected"), "{dead:?}");
    assert!(dead[0].died_at.is_some());
    // Listing removes nothing.
    assert_eq!(broker.dlq_depth().await, 3);
    bus.shutdown().await;
    broker.cleanup().await;
}

async fn no_retry_after_one_attempt(routing: Routing) {
    let broker = common::Broker::new();
    let (handler, mut rx) = recorder(Behaviour::Fail);
    let bus = amqp_bus(
        &broker,
        routing,
        &["s"],
        |c| {
            c.amqp.dead_letter = true;
            c.amqp.retry_max_attempts = 1;
            c.amqp.retry_initial_interval = Duration::from_millis(100);
        },
        handler,
    )
    .await;
    bus.publish(&BusEvent::Call(event("once", "s", Duration::from_secs(30))))
        .await
        .unwrap();
    let (ev, _) = recv(&mut rx).await;
    assert_eq!(ev.call_id, "once");
    common::eventually(Duration::from_secs(10), "dead-lettered", || async {
        broker.dlq_depth().await == 1
    })
    .await;
    // Rejected after the single attempt: the handler saw it once.
    nothing_more(&mut rx).await;
    bus.shutdown().await;
    broker.cleanup().await;
}

async fn manual_ack_holds_until_acknowledged(routing: Routing) {
    let broker = common::Broker::new();
    let (handler, mut rx) = recorder(Behaviour::AwaitAck);
    let bus = amqp_bus(
        &broker,
        routing,
        &["s"],
        |c| {
            c.amqp.ack_mode = AckMode::Manual;
            c.amqp.dead_letter = true;
        },
        handler.clone(),
    )
    .await;
    bus.publish(&BusEvent::Call(event("m1", "s", Duration::from_secs(30))))
        .await
        .unwrap();
    // m2 lives long enough for the broker's counts to be read in between,
    // even on a loaded machine where one `rabbitmqctl` call takes seconds
    // (with 8 s it sometimes expired before the second count).
    bus.publish(&BusEvent::Call(event("m2", "s", Duration::from_secs(20))))
        .await
        .unwrap();
    recv(&mut rx).await;
    recv(&mut rx).await;
    let unacked = || common::list_queues(&broker.prefix, &["messages_unacknowledged"]);
    assert_eq!(unacked()[0][1], "2");
    // The tablet acknowledges m1: the broker gets its ack.
    let m1 = handler.acks.lock().unwrap().remove(0);
    m1.send(()).unwrap();
    common::eventually(Duration::from_secs(10), "m1 acked", || async {
        unacked()[0][1] == "1"
    })
    .await;
    // Nobody acknowledges m2: it is rejected when it expires, into the DLQ.
    common::eventually(Duration::from_secs(45), "m2 rejected", || async {
        broker.dlq_depth().await == 1
    })
    .await;
    assert_eq!(unacked()[0][1], "0");
    bus.shutdown().await;
    broker.cleanup().await;
}

async fn none_and_auto_leave_nothing_unacknowledged(routing: Routing) {
    for mode in [AckMode::None, AckMode::Auto] {
        let broker = common::Broker::new();
        let (handler, mut rx) = recorder(Behaviour::AwaitAck);
        let bus = amqp_bus(
            &broker,
            routing,
            &["s"],
            |c| c.amqp.ack_mode = mode,
            handler,
        )
        .await;
        for i in 0..5 {
            bus.publish(&BusEvent::Call(event(
                &format!("n{i}"),
                "s",
                Duration::from_secs(30),
            )))
            .await
            .unwrap();
        }
        for _ in 0..5 {
            recv(&mut rx).await;
        }
        // Even though no tablet acknowledged, nothing stays unacked.
        common::eventually(Duration::from_secs(10), "nothing unacked", || async {
            let rows =
                common::list_queues(&broker.prefix, &["messages_unacknowledged", "messages"]);
            rows.len() == 1 && rows[0][1] == "0" && rows[0][2] == "0"
        })
        .await;
        bus.shutdown().await;
        broker.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_backoff_then_dead_lettered() {
    tokio::join!(
        retried_with_backoff_then_dead_lettered(Routing::Fanout),
        retried_with_backoff_then_dead_lettered(Routing::Store)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_attempt_means_no_retry() {
    tokio::join!(
        no_retry_after_one_attempt(Routing::Fanout),
        no_retry_after_one_attempt(Routing::Store)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_ack_holds_the_message_until_the_popup_is_acknowledged() {
    tokio::join!(
        manual_ack_holds_until_acknowledged(Routing::Fanout),
        manual_ack_holds_until_acknowledged(Routing::Store)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_modes_none_and_auto_leave_nothing_unacknowledged() {
    tokio::join!(
        none_and_auto_leave_nothing_unacknowledged(Routing::Fanout),
        none_and_auto_leave_nothing_unacknowledged(Routing::Store)
    );
}

/// `rabbitmqctl list_bindings` rows (source, routing key, destination)
/// from `exchange`.
fn bindings_from(exchange: &str) -> Vec<(String, String, String)> {
    common::rabbitmq_rows(
        "list_bindings",
        &["source_name", "routing_key", "destination_name"],
    )
    .into_iter()
    .filter_map(|row| match &row[..] {
        [source, key, queue] if source == exchange => {
            Some((source.clone(), key.clone(), queue.clone()))
        }
        _ => None,
    })
    .collect()
}

fn replays_of(handler: &Recorder, store: &str) -> usize {
    handler
        .replays
        .lock()
        .unwrap()
        .iter()
        .filter(|s| *s == store)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_routing_delivers_a_store_only_where_it_is_followed() {
    let broker = common::Broker::new();
    let routed = broker.routed_exchange();
    let grace = |c: &mut Config| c.amqp.unbind_grace = Duration::from_millis(300);
    let (h1, mut rx1) = recorder(Behaviour::Accept);
    let (h2, mut rx2) = recorder(Behaviour::Accept);
    let a = amqp_bus(&broker, Routing::Store, &["s1"], grace, h1.clone()).await;
    let b = amqp_bus(&broker, Routing::Store, &["s1", "s2"], grace, h2.clone()).await;

    // A durable direct exchange of its own; the fanout one is not declared.
    let exchanges = common::rabbitmq_rows("list_exchanges", &["name", "type", "durable"]);
    assert!(
        exchanges
            .iter()
            .any(|x| x[..] == [routed.as_str(), "direct", "true"]),
        "{exchanges:?}"
    );
    assert!(!exchanges.iter().any(|x| x[0] == broker.exchange));

    let publish = |bus: &Arc<dyn Bus>, id: &str, store: &str| {
        let (bus, ev) = (bus.clone(), event(id, store, Duration::from_secs(30)));
        async move {
            bus.publish(&BusEvent::Call(ev.clone()))
                .await
                .expect("published")
        }
    };
    publish(&a, "x1", "s1").await;
    publish(&a, "x2", "s2").await;
    publish(&b, "x3", "s3").await;
    assert_eq!(recv(&mut rx1).await.0.call_id, "x1");
    nothing_more(&mut rx1).await;
    let mut got = vec![
        recv(&mut rx2).await.0.call_id,
        recv(&mut rx2).await.0.call_id,
    ];
    got.sort();
    assert_eq!(got, ["x1", "x2"]);
    nothing_more(&mut rx2).await;

    // The last tablet leaves and one comes back within the grace: the
    // binding stays, nothing is replayed again.
    b.interest(Interest::Unfollow("s1".into()));
    b.interest(Interest::Follow("s1".into()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(replays_of(&h2, "s1"), 1);
    publish(&a, "x4", "s1").await;
    assert_eq!(recv(&mut rx1).await.0.call_id, "x4");
    assert_eq!(recv(&mut rx2).await.0.call_id, "x4");

    // Past the grace the binding goes: s1's events reach only A.
    b.interest(Interest::Unfollow("s1".into()));
    common::eventually(Duration::from_secs(20), "s1 unbound on B", || {
        let n = bindings_from(&routed)
            .iter()
            .filter(|(_, key, _)| key == "s1")
            .count();
        async move { n == 1 }
    })
    .await;
    publish(&b, "x5", "s1").await;
    assert_eq!(recv(&mut rx1).await.0.call_id, "x5");
    nothing_more(&mut rx2).await;

    // A tablet of s1 again: bound anew, and the bus asks for a replay of
    // what the binding may have missed.
    b.interest(Interest::Follow("s1".into()));
    common::eventually(Duration::from_secs(10), "s1 bound again", || {
        let n = replays_of(&h2, "s1");
        async move { n == 2 }
    })
    .await;
    publish(&a, "x6", "s1").await;
    assert_eq!(recv(&mut rx2).await.0.call_id, "x6");
    assert_eq!(recv(&mut rx1).await.0.call_id, "x6");

    // Each queue is bound by store key only, once per store it follows.
    let mut keys: Vec<String> = bindings_from(&routed)
        .into_iter()
        .map(|(_, k, _)| k)
        .collect();
    keys.sort();
    assert_eq!(keys, ["s1", "s1", "s2"]);
    a.shutdown().await;
    b.shutdown().await;
    broker.cleanup().await;
}

/// The outbox: an event published while the broker is away is kept and
/// published after reconnection, in both routings (with store routing the
/// new queue is bound again first).
async fn outbox_republishes_after_reconnection(routing: Routing) {
    let broker = common::Broker::new();
    let relay = common::relay::Relay::start("127.0.0.1:5672".into()).await;
    let (handler, mut rx) = recorder(Behaviour::Accept);
    let port = relay.port;
    let bus = amqp_bus(
        &broker,
        routing,
        &["s"],
        |c| c.amqp.url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        handler,
    )
    .await;
    relay.cut();
    common::eventually(Duration::from_secs(10), "bus down", || {
        let down = bus.state() == BusState::Reconnecting;
        async move { down }
    })
    .await;
    let kept = bus
        .publish(&BusEvent::Call(event(
            "while-away",
            "s",
            Duration::from_secs(30),
        )))
        .await;
    assert!(kept.is_err(), "a publish without a broker is not confirmed");
    relay.restore();
    let (ev, _) = recv(&mut rx).await;
    assert_eq!(ev.call_id, "while-away");
    nothing_more(&mut rx).await;
    bus.shutdown().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_republishes_after_reconnection() {
    tokio::join!(
        outbox_republishes_after_reconnection(Routing::Fanout),
        outbox_republishes_after_reconnection(Routing::Store)
    );
}

/// `bizcall dlq replay` with store routing: a dead call event goes back to
/// the direct exchange under its store's key, to the instances holding
/// that store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_routing_dlq_replay_reaches_the_store() {
    let broker = common::Broker::new();
    let (failing, mut failed) = recorder(Behaviour::Fail);
    let dead = amqp_bus(
        &broker,
        Routing::Store,
        &["s"],
        |c| {
            c.amqp.dead_letter = true;
            c.amqp.retry_max_attempts = 1;
        },
        failing,
    )
    .await;
    dead.publish(&BusEvent::Call(event(
        "again",
        "s",
        Duration::from_secs(30),
    )))
    .await
    .unwrap();
    recv(&mut failed).await;
    common::eventually(Duration::from_secs(10), "dead-lettered", || async {
        broker.dlq_depth().await == 1
    })
    .await;
    dead.shutdown().await;

    let (handler, mut rx) = recorder(Behaviour::Accept);
    let (other, mut rx_other) = recorder(Behaviour::Accept);
    let live = amqp_bus(
        &broker,
        Routing::Store,
        &["s"],
        |c| c.amqp.dead_letter = true,
        handler,
    )
    .await;
    let elsewhere = amqp_bus(
        &broker,
        Routing::Store,
        &["t"],
        |c| c.amqp.dead_letter = true,
        other,
    )
    .await;
    let mut config = Config::default();
    broker.apply(&mut config);
    config.amqp.routing = Routing::Store;
    config.amqp.dead_letter = true;
    let (replayed, skipped) = bizcall::bus::amqp::dlq::replay(&config).await.unwrap();
    assert_eq!((replayed, skipped), (1, 0));
    assert_eq!(recv(&mut rx).await.0.call_id, "again");
    nothing_more(&mut rx_other).await;
    assert_eq!(broker.dlq_depth().await, 0);
    live.shutdown().await;
    elsewhere.shutdown().await;
    broker.cleanup().await;
}
