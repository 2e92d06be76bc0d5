//! One tablet's outgoing queue as the hub keeps it: updates of a call
//! replace each other, a handled event queues beside its call, a full
//! queue closes the tablet as a slow consumer.

use std::sync::Arc;

use bizcall::call::{CallEvent, CallStatus, EventKind, HandledEvent};
use bizcall::config::Config;
use bizcall::hub::{Hub, Kick, Tablet};
use bizcall::prepared::Prepared;
use bizcall::subscription::TAKEN_LIMIT;
use chrono::Utc;

/// A tablet of store "s" on a hub whose tablets queue `capacity` popups.
fn tablet(capacity: usize) -> Arc<Tablet> {
    let mut config = Config::default();
    config.stomp.outbound_queue = capacity;
    let hub = Hub::new(Arc::new(config));
    hub.register("s", "t", None).expect("no cap")
}

fn event(id: &str, status: CallStatus) -> Arc<Prepared> {
    let now = Utc::now();
    Arc::new(Prepared::new(CallEvent {
        kind: EventKind::Call,
        call_id: id.into(),
        store: "s".into(),
        status,
        caller_number: "0101".into(),
        virtual_number: None,
        started_at: now,
        answered_at: None,
        ended_at: None,
        published_at: now,
        expires_at: now + chrono::Duration::seconds(30),
        published_us: None,
    }))
}

#[test]
fn updates_of_one_call_replace_each_other_in_the_queue() {
    let t = tablet(2);
    t.offer(event("a", CallStatus::Ringing));
    t.offer(event("b", CallStatus::Ringing));
    t.offer(event("a", CallStatus::Completed));
    // A stale update does not overwrite a newer one.
    t.offer(event("a", CallStatus::Answered));
    let (popups, closing) = t.take();
    assert!(closing.is_none());
    let got: Vec<(&str, CallStatus)> = popups
        .iter()
        .map(|p| (p.call_id(), p.call().unwrap().status))
        .collect();
    assert_eq!(
        got,
        [("a", CallStatus::Completed), ("b", CallStatus::Ringing)]
    );
}

#[test]
fn a_handled_event_queues_beside_its_call_and_replaces_only_its_own_kind() {
    let t = tablet(4);
    t.offer(event("a", CallStatus::Ringing));
    let handled = |by: &str| {
        Arc::new(Prepared::handled(HandledEvent::new(
            "a",
            "s",
            by,
            Utc::now(),
            std::time::Duration::from_secs(30),
        )))
    };
    t.offer(handled("desk"));
    t.offer(handled("bay"));
    t.offer(event("a", CallStatus::Answered));
    let (popups, _) = t.take();
    let got: Vec<(EventKind, Option<CallStatus>)> = popups
        .iter()
        .map(|p| (p.kind(), p.call().map(|c| c.status)))
        .collect();
    assert_eq!(
        got,
        [
            (EventKind::Call, Some(CallStatus::Answered)),
            (EventKind::Handled, None)
        ]
    );
    assert!(
        popups[1].legacy_json().is_none(),
        "never in the legacy shape"
    );
    assert!(popups[0].legacy_json().is_some());
    t.took("a");
    assert!(t.has_taken("a") && !t.has_taken("b"));
    for i in 0..TAKEN_LIMIT {
        t.took(&format!("c{i}"));
    }
    assert!(!t.has_taken("a"), "the oldest are forgotten");
}

#[test]
fn a_full_queue_closes_the_tablet_as_slow() {
    let t = tablet(2);
    for id in ["a", "b", "c"] {
        t.offer(event(id, CallStatus::Ringing));
    }
    let (popups, closing) = t.take();
    assert!(popups.is_empty());
    assert_eq!(closing, Some(Kick::SlowConsumer));
}
