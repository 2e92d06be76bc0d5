//! Why the broker could not be used: each failure with its own line for
//! people, told apart from the broker's own error texts.

use super::tls::TlsSettingsError;
use super::*;

/// Why the broker could not be used, each with its own line for people.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("RabbitMQ exchange '{exchange}' exists with type '{current}' but bizcall needs '{needed}': delete it on the broker (for vhost /: rabbitmqctl eval 'rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"{exchange}\">>), false, <<\"cli\">>).') or choose another {setting}")]
    ExchangeType {
        exchange: String,
        current: String,
        needed: &'static str,
        setting: &'static str,
    },
    #[error("RabbitMQ at {broker} refused the credentials in amqp.url: check the user name and password")]
    Credentials { broker: String },
    #[error("RabbitMQ at {broker}: {detail}")]
    Refused { broker: String, detail: String },
    #[error("RabbitMQ at {broker}: {detail}")]
    Tls { broker: String, detail: String },
    #[error("amqp.tls: {0}")]
    TlsSettings(#[from] TlsSettingsError),
    #[error("RabbitMQ unreachable at {broker}: {detail}; retrying")]
    Unreachable { broker: String, detail: String },
}

impl LinkError {
    /// Errors that retrying will not fix: the instance stops at start.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, LinkError::Unreachable { .. })
    }
}

/// The broker address from an AMQP URL, without credentials, for messages.
pub fn broker_address(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port()
                .unwrap_or(if u.scheme() == "amqps" { 5671 } else { 5672 })
        ),
        Err(_) => "the broker in amqp.url".into(),
    }
}

pub(crate) fn classify(err: &lapin::Error, config: &AmqpConfig, node: &str) -> LinkError {
    let broker = broker_address(node);
    if let lapin::ErrorKind::ProtocolError(amqp) = err.kind() {
        let text = amqp.get_message().to_string();
        match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                if text.contains("Login was refused") =>
            {
                return LinkError::Credentials { broker };
            }
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                if text.contains("inequivalent arg 'type'") =>
            {
                let current = quoted_after(&text, "current is '").unwrap_or("another type");
                let routed = config.routed_exchange();
                let (exchange, needed, setting) =
                    if quoted_after(&text, "for exchange '") == Some(routed.as_str()) {
                        (routed.clone(), "direct", "amqp.routed_exchange")
                    } else {
                        (config.exchange.clone(), "fanout", "amqp.exchange")
                    };
                return LinkError::ExchangeType {
                    exchange,
                    current: current.to_string(),
                    needed,
                    setting,
                };
            }
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => {}
            _ => {
                return LinkError::Refused {
                    broker,
                    detail: text,
                };
            }
        }
    }
    LinkError::Unreachable {
        broker,
        detail: err.to_string(),
    }
}

/// The text between `marker` and the next `'` in a broker's message.
pub(super) fn quoted_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let (_, rest) = text.split_once(marker)?;
    rest.split('\'').next()
}
