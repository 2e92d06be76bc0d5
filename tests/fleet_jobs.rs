//! The fleet jobs (retention, trail prune) run on one instance at a time:
//! three real instances on one PostgreSQL with `database.jobs_interval` at
//! 2 s; exactly one holds the lease and runs them, about once per interval
//! for the whole fleet; after a SIGKILL of that one, another takes over
//! within one interval and the jobs go on at the same pace.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Instance, TestDb};

const INTERVAL: Duration = Duration::from_secs(2);

async fn held(base: &str) -> bool {
    common::metric(base, "bizcall_fleet_jobs_held").await == 1.0
}

async fn runs(base: &str) -> f64 {
    common::metric(base, "bizcall_fleet_job_runs_total").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_runs_the_fleet_jobs_and_another_takes_over_when_it_dies() {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("BIZCALL_DATABASE__URL", db.url()),
        ("BIZCALL_DATABASE__JOBS_INTERVAL", "2s"),
    ];
    let mut instances: Vec<Instance> = (0..3).map(|_| Instance::spawn(dir.path(), &env)).collect();
    let bases: Vec<String> = instances.iter().map(|i| i.base()).collect();

    // Settled: one holder, the others waiting.
    tokio::time::sleep(INTERVAL * 3).await;
    let mut holders = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        if held(base).await {
            holders.push(i);
        }
    }
    assert_eq!(holders.len(), 1, "holders: {holders:?}");
    let holder = holders[0];
    for (i, base) in bases.iter().enumerate() {
        if i != holder {
            assert_eq!(runs(base).await, 0.0, "instance {i} ran the jobs too");
        }
    }
    // About once per interval for the fleet, not once per instance.
    let before = runs(&bases[holder]).await;
    tokio::time::sleep(INTERVAL * 5).await;
    let ran = runs(&bases[holder]).await - before;
    assert!((4.0..=6.0).contains(&ran), "{ran} runs in five intervals");

    // The holder dies without a word: another takes over within one
    // interval (its lease is half an interval; checks every tenth).
    let _ = instances[holder].child.kill();
    let _ = instances[holder].child.wait();
    let killed = Instant::now();
    let others: Vec<&String> = bases
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != holder)
        .map(|(_, b)| b)
        .collect();
    let mut next = None;
    while killed.elapsed() < INTERVAL {
        for (k, base) in others.iter().enumerate() {
            if held(base).await {
                next = Some(k);
            }
        }
        if next.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took_over = killed.elapsed();
    let next = next.unwrap_or_else(|| {
        panic!(
            "no instance took the fleet jobs over within {INTERVAL:?}\n{}",
            instances
                .iter()
                .map(|i| i.log_text())
                .collect::<Vec<_>>()
                .join("\n---\n")
        )
    });
    println!("taken over {took_over:?} after the SIGKILL");
    let other = others[1 - next];
    assert!(!held(other).await, "two holders at once");
    common::eventually(INTERVAL * 2, "the new holder runs the jobs", || async {
        runs(others[next]).await >= 1.0
    })
    .await;
    assert_eq!(runs(other).await, 0.0, "the third instance ran the jobs");
    // Instances after the first find the schema there: PostgreSQL's
    // "already exists, skipping" notices are not logged at info.
    for i in &instances {
        let log = i.log_text();
        assert!(!log.contains("already exists, skipping"), "{log}");
    }

    drop(instances);
    db.cleanup().await;
}
