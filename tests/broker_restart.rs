//! The broker drops every connection, then stops and starts again, while
//! CDRs keep arriving. The broker is a RabbitMQ node of the test's own
//! (tests/common/rabbit.rs), never the shared one: its other clients are
//! not disturbed, and the node goes, pass or fail, when `nodes` is dropped.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bizcall::bus::BusState;
use chrono::Utc;
use common::rabbit::Nodes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdrs_survive_connection_loss_and_a_broker_restart() {
    let nodes = tokio::task::block_in_place(Nodes::single);
    let node = &nodes.nodes[0];
    let ctl = |args: &[&str]| {
        tokio::task::block_in_place(|| node.ctl_ok(args));
    };
    let db = common::TestDb::new(common::Backend::Postgres).await;
    let broker = common::Broker::on(&node.url());
    let pool = db.connect().await;
    pool.store_add("s1", "S1", &["0501".to_string()])
        .await
        .unwrap();
    let mut config = common::config_for(db.url());
    broker.apply(&mut config);
    config.bus.message_ttl = Duration::from_secs(3);
    let server = common::start(config).await;
    let app = server.app.clone();
    let base = common::base(server.addr);

    // Record when each event reaches the hub, against its expiry.
    let late: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut events = app.delivery.watch();
    let (late2, seen2) = (late.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            if Utc::now() > ev.expires_at {
                late2.lock().unwrap().push(ev.call_id.clone());
            }
            seen2.lock().unwrap().push(ev.call_id);
        }
    });

    // A steady stream of CDRs for the whole test.
    let ok: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let (ok2, stop2, base2) = (ok.clone(), stop.clone(), base.clone());
    let feeder = tokio::spawn(async move {
        let mut n = 0;
        while !stop2.is_cancelled() {
            n += 1;
            let seq = format!("r{n}");
            if common::post_call(&base2, &seq, "0501").await == 200 {
                ok2.lock().unwrap().push(seq);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let up = |want: BusState| {
        let app = app.clone();
        async move {
            common::eventually(Duration::from_secs(60), &format!("bus {want:?}"), || {
                let s = app.bus.state();
                async move { s == want }
            })
            .await
        }
    };
    up(BusState::Up).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    ctl(&["close_all_connections", "bizcall test"]);
    up(BusState::Reconnecting).await;
    up(BusState::Up).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    ctl(&["stop_app"]);
    up(BusState::Reconnecting).await;
    let r = common::http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "still ready: CDRs are stored");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["bus"], "reconnecting");
    // Longer than the TTL, so some held events must expire unpublished.
    tokio::time::sleep(Duration::from_secs(5)).await;
    ctl(&["start_app"]);
    up(BusState::Up).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    feeder.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ok = ok.lock().unwrap().clone();
    assert!(ok.len() > 100, "the stream kept going: {} OK", ok.len());
    for seq in &ok {
        assert!(
            pool.call(seq).await.unwrap().is_some(),
            "{seq} answered OK but not stored"
        );
    }
    assert!(
        late.lock().unwrap().is_empty(),
        "events past their TTL reached the hub: {:?}",
        late.lock().unwrap()
    );
    let seen = seen.lock().unwrap().clone();
    // Events published after the restart still arrive.
    assert!(
        seen.contains(ok.last().unwrap()),
        "the last CDR's event arrived"
    );
    // Events from the outage that outlived the TTL were dropped, not sent.
    assert!(common::metric(&base, "bizcall_bus_reconnects_total").await >= 2.0);

    pool.close().await;
    server.stop().await.unwrap();
    db.cleanup().await;
    // The broker's names go with the node, and the node with `nodes`.
}
