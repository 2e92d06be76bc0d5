//! An event as tablets receive it: its JSON written once per event, not
//! once per tablet.

use chrono::{DateTime, Utc};

use crate::call::{BusEvent, CallEvent, EventKind, HandledEvent};

/// An event as tablets receive it: the JSON body is written once per
/// event, not once per tablet.
#[derive(Debug)]
pub struct Prepared {
    event: BusEvent,
    pub json: String,
    /// The legacy destination's body, written when first asked for.
    legacy: std::sync::OnceLock<String>,
}

impl Prepared {
    pub fn new(event: CallEvent) -> Self {
        Self::of(BusEvent::Call(event))
    }

    pub fn handled(event: HandledEvent) -> Self {
        Self::of(BusEvent::Handled(event))
    }

    fn of(event: BusEvent) -> Self {
        Prepared {
            json: event.to_json(),
            event,
            legacy: std::sync::OnceLock::new(),
        }
    }

    /// The call event, when this is one.
    pub fn call(&self) -> Option<&CallEvent> {
        match &self.event {
            BusEvent::Call(e) => Some(e),
            BusEvent::Handled(_) => None,
        }
    }

    pub fn kind(&self) -> EventKind {
        match &self.event {
            BusEvent::Call(_) => EventKind::Call,
            BusEvent::Handled(_) => EventKind::Handled,
        }
    }

    pub fn call_id(&self) -> &str {
        self.event.call_id()
    }

    pub fn store(&self) -> &str {
        self.event.store()
    }

    /// When its bus message was published, in microseconds (RabbitMQ).
    pub fn published_us(&self) -> Option<i64> {
        self.call().and_then(|e| e.published_us)
    }

    pub fn published_at(&self) -> DateTime<Utc> {
        self.event.published_at()
    }

    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.event.is_live(now)
    }

    /// The body on `/ws/v1/topic/call-store/<slug>`: call popups only.
    pub fn legacy_json(&self) -> Option<&str> {
        let call = self.call()?;
        Some(self.legacy.get_or_init(|| call.to_legacy_json()))
    }

    /// Status rank of a call event (a handled event ranks above all).
    pub(crate) fn rank(&self) -> i32 {
        self.call().map_or(i32::MAX, |e| e.status.rank())
    }
}
