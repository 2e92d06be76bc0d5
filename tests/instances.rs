//! Several real `bizcall serve` processes on one PostgreSQL and the real
//! RabbitMQ: fanout to every instance, queues that live and die with them,
//! TTL and the dead-letter queue, and the start-up error lines.

mod common;

use std::time::Duration;

use common::{Backend, Broker, Instance, TestDb};

const VN: &str = "05077778888";

fn env_for(db: &TestDb, broker: &Broker, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = broker.env();
    env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_each_get_every_event() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = Broker::new();
    let env = env_for(&db, &broker, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = common::run_cli(
        &["store", "add", "s1", "--name", "S1", "--number", VN],
        &common::env_refs(&env),
    );
    assert_eq!(code, 0, "{err}");
    let mut instances: Vec<Instance> = (0..3)
        .map(|_| Instance::spawn(dir.path(), &common::env_refs(&env)))
        .collect();
    for i in &instances {
        common::bus_up(&i.base(), Duration::from_secs(20)).await;
    }
    let queues = common::list_queues(&broker.prefix, &["exclusive", "auto_delete"]);
    assert_eq!(queues.len(), 3, "{queues:?}");
    assert!(
        queues.iter().all(|q| q[1] == "true" && q[2] == "true"),
        "{queues:?}"
    );

    // CDRs land on different instances; every instance consumes each once.
    for (n, seq) in ["a1", "a2", "a3"].iter().enumerate() {
        assert_eq!(common::post_call(&instances[n].base(), seq, VN).await, 200);
    }
    for i in &instances {
        let base = i.base();
        common::eventually(Duration::from_secs(10), "3 events consumed", || {
            let base = base.clone();
            async move { common::metric(&base, "bizcall_events_consumed_total").await == 3.0 }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in &instances {
        assert_eq!(
            common::metric(&i.base(), "bizcall_events_consumed_total").await,
            3.0
        );
        assert_eq!(
            common::metric(&i.base(), "bizcall_events_expired_total").await,
            0.0
        );
    }
    let check = db.connect().await;
    assert_eq!(check.count_calls().await.unwrap(), 3);
    check.close().await;

    for i in instances.iter_mut() {
        assert!(i.terminate().success());
    }
    common::eventually(Duration::from_secs(10), "queues gone", || async {
        common::list_queues(&broker.prefix, &[]).is_empty()
    })
    .await;
    broker.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_dead_lettered_and_the_dlq_commands_work() {
    let db = TestDb::new(Backend::Sqlite).await;
    let broker = Broker::new();
    let env = env_for(
        &db,
        &broker,
        &[
            ("BIZCALL_AMQP__DEAD_LETTER", "true"),
            ("BIZCALL_BUS__MESSAGE_TTL", "1s"),
        ],
    );
    let envr = common::env_refs(&env);
    assert_eq!(
        common::run_cli(
            &["store", "add", "s1", "--name", "S1", "--number", VN],
            &envr
        )
        .0,
        0
    );
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::spawn(dir.path(), &envr);
    let base = instance.base();
    common::bus_up(&base, Duration::from_secs(20)).await;

    // A queue with nobody consuming it stands for a paused instance.
    let paused = format!("{}-paused", broker.prefix);
    let (conn, ch) = broker.channel().await;
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        lapin::types::AMQPValue::LongString(broker.dlx.as_str().into()),
    );
    ch.queue_declare(
        paused.as_str().into(),
        lapin::options::QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        paused.as_str().into(),
        broker.exchange.as_str().into(),
        "".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();

    assert_eq!(common::post_call(&base, "ttl1", VN).await, 200);
    common::eventually(Duration::from_secs(15), "expired into the DLQ", || async {
        broker.dlq_depth().await == 1
    })
    .await;
    let (code, out, err) = common::run_cli(&["dlq", "list"], &envr);
    assert_eq!(code, 0, "{err}");
    let fields: Vec<&str> = out.trim().split('\t').collect();
    assert_eq!(&fields[..3], ["ttl1", "s1", "expired"], "{out}");
    assert!(err.contains("1 dead message(s)"), "{err}");

    // Replay publishes it again with a fresh TTL: the instance consumes it.
    let consumed = common::metric(&base, "bizcall_events_consumed_total").await;
    let (code, _, err) = common::run_cli(&["dlq", "replay"], &envr);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("replayed 1"), "{err}");
    common::eventually(Duration::from_secs(10), "replayed event consumed", || {
        let base = base.clone();
        async move { common::metric(&base, "bizcall_events_consumed_total").await == consumed + 1.0 }
    })
    .await;
    // The copy in the paused queue expires again; purge empties the DLQ.
    common::eventually(Duration::from_secs(15), "expired again", || async {
        broker.dlq_depth().await == 1
    })
    .await;
    let (code, _, err) = common::run_cli(&["dlq", "purge"], &envr);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("purged 1"), "{err}");
    assert_eq!(broker.dlq_depth().await, 0);

    let _ = ch
        .queue_delete(paused.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    drop(instance);
    broker.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_back_from_a_pause_shows_no_stale_popup() {
    // PostgreSQL, as several instances are run: an instance stopped by
    // SIGSTOP in the middle of a write would hold a shared SQLite file's
    // lock and stall the other instance's CDRs with it.
    let db = TestDb::new(Backend::Postgres).await;
    let broker = Broker::new();
    let env = env_for(
        &db,
        &broker,
        &[
            ("BIZCALL_AMQP__DEAD_LETTER", "true"),
            ("BIZCALL_BUS__MESSAGE_TTL", "1s"),
        ],
    );
    let envr = common::env_refs(&env);
    assert_eq!(
        common::run_cli(
            &["store", "add", "s1", "--name", "S1", "--number", VN],
            &envr
        )
        .0,
        0
    );
    let dir = tempfile::tempdir().unwrap();
    let a = Instance::spawn(dir.path(), &envr);
    let b = Instance::spawn(dir.path(), &envr);
    for base in [a.base(), b.base()] {
        common::bus_up(&base, Duration::from_secs(20)).await;
    }
    let pid = b.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(common::post_call(&a.base(), "p1", VN).await, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    // B finds the event expired: it is counted, not shown, and rejected.
    common::eventually(Duration::from_secs(10), "expired on B", || {
        let base = b.base();
        async move { common::metric(&base, "bizcall_events_expired_total").await == 1.0 }
    })
    .await;
    common::eventually(
        Duration::from_secs(10),
        "B's copy dead-lettered",
        || async { broker.dlq_depth().await == 1 },
    )
    .await;
    drop((a, b));
    broker.cleanup().await;
    db.cleanup().await;
}

/// Runs `bizcall serve` that is expected to stop at once; returns its stderr.
fn serve_fails(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::bin())
        .arg("serve")
        .current_dir(dir.path())
        .env("BIZCALL_SERVER__LISTEN", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_each_have_their_line() {
    let broker = Broker::new();
    let (conn, ch) = broker.channel().await;
    ch.exchange_declare(
        broker.exchange.as_str().into(),
        lapin::ExchangeKind::Direct,
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let env = broker.env();
    let err = serve_fails(&common::env_refs(&env));
    let want = format!(
        "error: RabbitMQ exchange '{x}' exists with type 'direct' but bizcall needs 'fanout': delete it on the broker (for vhost /: rabbitmqctl eval 'rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"{x}\">>)",
        x = broker.exchange
    );
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("or choose another amqp.exchange"), "{err}");
    let _ = ch
        .exchange_delete(broker.exchange.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "done".into()).await;

    let mut env = broker.env();
    env.push((
        "BIZCALL_AMQP__URL".into(),
        "amqp://guest:wrong-password@127.0.0.1:5672/%2f".into(),
    ));
    let err = serve_fails(&common::env_refs(&env));
    assert!(
        err.contains(
            "error: RabbitMQ at amqp://127.0.0.1:5672 refused the credentials in amqp.url"
        ),
        "{err}"
    );
    assert!(
        !err.contains("wrong-password"),
        "the password is never printed: {err}"
    );

    // Unreachable: the instance serves anyway, says where, and keeps trying.
    let mut env = broker.env();
    env.push((
        "BIZCALL_AMQP__URL".into(),
        "amqp://guest:guest@127.0.0.1:1/%2f".into(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::spawn(dir.path(), &common::env_refs(&env));
    assert!(
        instance
            .log_text()
            .contains("RabbitMQ unreachable at amqp://127.0.0.1:1:"),
        "{}",
        instance.log_text()
    );
    let r = common::http()
        .get(format!("{}/readyz", instance.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["bus"], "reconnecting");
    assert_eq!(body["database"], "up");
    assert_eq!(common::post_call(&instance.base(), "u1", VN).await, 200);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_routing_start_up_errors() {
    // The direct exchange exists as a fanout one.
    let broker = Broker::new();
    let routed = broker.routed_exchange();
    let (conn, ch) = broker.channel().await;
    ch.exchange_declare(
        routed.as_str().into(),
        lapin::ExchangeKind::Fanout,
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let mut env = broker.env();
    env.push(("BIZCALL_AMQP__ROUTING".into(), "store".into()));
    let err = serve_fails(&common::env_refs(&env));
    let want = format!(
        "error: RabbitMQ exchange '{routed}' exists with type 'fanout' but bizcall needs 'direct'"
    );
    assert!(err.contains(&want), "{err}");
    assert!(
        err.contains("or choose another amqp.routed_exchange"),
        "{err}"
    );
    let _ = conn.close(200, "done".into()).await;
    broker.cleanup().await;

    // One routing beside live instances of the other: refused with one
    // line, in both directions; the same routing starts.
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new();
    for (running, starting) in [("store", "fanout"), ("fanout", "store")] {
        let env = env_for(&db, &broker, &[("BIZCALL_AMQP__ROUTING", running)]);
        let mut first = Instance::spawn(dir.path(), &common::env_refs(&env));
        // Its row in the instances table is written within a second.
        let pool = db.connect().await;
        common::eventually(Duration::from_secs(10), "first instance listed", || {
            let pool = pool.clone();
            let wanted = Some(running.to_string());
            async move {
                let live = pool.instances_alive(0).await.unwrap();
                live.iter().any(|i| i.bus == wanted)
            }
        })
        .await;
        pool.close().await;
        let env = env_for(&db, &broker, &[("BIZCALL_AMQP__ROUTING", starting)]);
        let err = serve_fails(&common::env_refs(&env));
        assert!(
            err.contains(&format!("amqp.routing is \"{starting}\" but instance "))
                && err.contains(&format!(":{} (heard from", first.addr.port()))
                && err.contains(&format!("uses \"{running}\"")),
            "{err}"
        );
        assert!(
            err.contains("every instance must use the same routing"),
            "{err}"
        );
        let env = env_for(&db, &broker, &[("BIZCALL_AMQP__ROUTING", running)]);
        let mut second = Instance::spawn(dir.path(), &common::env_refs(&env));
        // Stopped cleanly, each leaves the instances table.
        assert!(first.terminate().success());
        assert!(second.terminate().success());
    }
    broker.cleanup().await;
    db.cleanup().await;
}
