//! The bus that carries call events between instances: one contract, an
//! in-process implementation for a single instance, and RabbitMQ for many.

pub mod amqp;

pub mod local;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::call::{BusEvent, CallEvent, HandledEvent};

/// How the bus link stands, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusState {
    Up,
    Reconnecting,
}

impl BusState {
    pub fn as_str(self) -> &'static str {
        match self {
            BusState::Up => "up",
            BusState::Reconnecting => "reconnecting",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The in-process bus has stopped (the instance is stopping).
    #[error("bus unavailable: the local bus has stopped")]
    Stopped,
    /// The broker link is being re-established; the event waits in the
    /// outbox.
    #[error("bus unavailable: RabbitMQ is reconnecting")]
    Reconnecting,
    /// The link failed while publishing; the event waits in the outbox.
    #[error("bus unavailable: {0}")]
    Link(Box<dyn std::error::Error + Send + Sync>),
    /// The broker refused the message.
    #[error("publish not confirmed: the broker nacked the message")]
    Nacked,
    /// No confirm came in time.
    #[error("publish not confirmed: no confirm within {} s", .0.as_secs())]
    NoConfirm(std::time::Duration),
}

/// What became of an event handed to this instance's tablets.
pub enum Handled {
    /// Nothing here waits for an acknowledgement.
    Done,
    /// A tablet here shows the popup; resolves on its first ACK.
    AwaitingAck(oneshot::Receiver<()>),
}

/// The failure of one attempt to hand an event over (it may be retried).
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// A part the handler needs did not answer.
    #[error("handler unavailable: {0}")]
    Unavailable(&'static str),
}

/// Receives every event the bus delivers to this instance.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    async fn handle(&self, event: CallEvent) -> Result<Handled, HandleError>;

    /// A tablet took a call (on this instance or another): the popup can
    /// close on the store's other tablets. Nothing waits for it.
    async fn handled(&self, _event: HandledEvent) {}

    /// The bus link came back after a gap during which this instance's
    /// queue did not exist: events published meanwhile never reached it.
    /// The handler may catch up from elsewhere (the hub does, from the
    /// database).
    async fn resync(&self) {}

    /// Store-routed delivery just bound this instance's queue to these
    /// stores: their events published before the binding took effect never
    /// reached it. The handler replays them from elsewhere (the hub does,
    /// from the database) to these stores' tablets.
    async fn replay(&self, _stores: &[String]) {}
}

/// A store's first tablet came to this instance, or its last one left
/// (store-routed delivery binds and unbinds on these); the hub's type.
pub use crate::hub::Interest;

/// Publishes call events to every instance, and delivers every instance's
/// events to this one's handler.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes an event. `Ok` means every instance will see it (for
    /// RabbitMQ: the broker confirmed it). On error the event is kept and
    /// published later while it is still inside its TTL.
    async fn publish(&self, event: &BusEvent) -> Result<(), BusError>;

    fn state(&self) -> BusState;

    /// Whether this instance may be missing events right now: its link is
    /// down, or its canary is late. The relay then reads every change from
    /// the database, not only those nobody handed to the bus.
    fn doubtful(&self) -> bool {
        false
    }

    /// The broker node the link is on now (`amqp://host:port`), if any.
    fn node(&self) -> Option<String> {
        None
    }

    /// A store's first tablet came, or its last one left. Only the
    /// store-routed RabbitMQ bus acts on it; it never blocks.
    fn interest(&self, _change: Interest) {}

    /// Stops consuming and leaves the broker cleanly.
    async fn shutdown(&self);
}

pub type SharedBus = Arc<dyn Bus>;
