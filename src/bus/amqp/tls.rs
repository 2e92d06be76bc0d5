//! TLS for `amqps://` nodes (`amqp.tls`, docs/rabbitmq.md "TLS"): the
//! system's root certificates plus an optional private CA, an optional
//! client certificate, an optional name to check instead of the URL's host,
//! and one line per failure that says what to change.

use std::net::SocketAddr;
use std::time::Duration;

use super::LinkError;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use rustls_connector::rustls::client::danger::ServerCertVerifier;
use rustls_connector::rustls::client::ResolvesClientCert;
use rustls_connector::rustls::crypto::CryptoProvider;
use rustls_connector::rustls::pki_types::pem::PemObject;
use rustls_connector::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls_connector::rustls::sign::CertifiedKey;
use rustls_connector::rustls::{
    self, AlertDescription, CertificateError, ClientConfig, SignatureScheme,
};

use crate::config::AmqpConfig;

/// What `amqp.tls` resolves to, loaded once at start.
pub struct Tls {
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<Arc<CertifiedKey>>,
    server_name: Option<String>,
}

/// One TLS attempt: its connector and whether the broker asked for a
/// client certificate during the handshake.
pub struct Session {
    pub connector: RustlsConnector,
    pub server_name: String,
    pub asked_for_certificate: Arc<AtomicBool>,
    pub has_identity: bool,
}

/// An `amqp.tls` setting that cannot be used; the start stops with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsSettingsError {
    #[error("cannot load the trusted certificates: {0}")]
    Roots(rustls::Error),
    #[error("{key} {}: cannot read it: {source}", path.display())]
    Unreadable {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{key} {}: not a PEM file: {detail}", path.display())]
    NotPem {
        key: &'static str,
        path: PathBuf,
        detail: rustls::pki_types::pem::Error,
    },
    #[error("{key} {}: no PEM certificate in it", path.display())]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("amqp.tls.key_file {}: no PEM private key in it", .0.display())]
    NoPrivateKey(PathBuf),
    #[error("amqp.tls.key_file {} does not go with amqp.tls.cert_file {}: {source}", key.display(), cert.display())]
    KeyMismatch {
        key: PathBuf,
        cert: PathBuf,
        source: rustls::Error,
    },
    #[error("amqp.tls.cert_file and amqp.tls.key_file go together: set both or neither")]
    HalfIdentity,
    #[error("{0}")]
    Protocol(rustls::Error),
    #[error("no TLS configuration could be loaded")]
    NotLoaded,
}

impl Tls {
    /// Loads `amqp.tls`. `Ok(None)` when no node uses TLS, no setting is
    /// made, and the system has no roots to load (plain AMQP still works).
    pub fn load(config: &AmqpConfig) -> Result<Option<Arc<Tls>>, TlsSettingsError> {
        let wanted = config.nodes().iter().any(|n| n.starts_with("amqps:"))
            || config.tls != Default::default();
        match Tls::build(config) {
            Ok(tls) => Ok(Some(Arc::new(tls))),
            Err(e) if wanted => Err(e),
            Err(_) => Ok(None),
        }
    }

    fn build(config: &AmqpConfig) -> Result<Tls, TlsSettingsError> {
        let settings = &config.tls;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut extra = Vec::new();
        if let Some(path) = &settings.ca_file {
            extra = read_certificates(path, "amqp.tls.ca_file")?;
        }
        let verifier = rustls_connector::rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra,
            provider.clone(),
        )
        .map_err(TlsSettingsError::Roots)?;
        let identity = match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert, "amqp.tls.cert_file")?;
                let pem = std::fs::read(key).map_err(|source| TlsSettingsError::Unreadable {
                    key: "amqp.tls.key_file",
                    path: key.clone(),
                    source,
                })?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|_| TlsSettingsError::NoPrivateKey(key.clone()))?;
                let certified =
                    CertifiedKey::from_der(chain, key_der, &provider).map_err(|source| {
                        TlsSettingsError::KeyMismatch {
                            key: key.clone(),
                            cert: cert.clone(),
                            source,
                        }
                    })?;
                Some(Arc::new(certified))
            }
            (None, None) => None,
            _ => return Err(TlsSettingsError::HalfIdentity),
        };
        Ok(Tls {
            provider,
            verifier: Arc::new(verifier),
            identity,
            server_name: settings.server_name.clone(),
        })
    }

    /// A connector for one connection to `host` (the URL's host).
    pub fn session(&self, host: &str) -> Result<Session, TlsSettingsError> {
        let asked = Arc::new(AtomicBool::new(false));
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsSettingsError::Protocol)?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier.clone())
            .with_client_cert_resolver(Arc::new(ClientIdentity {
                key: self.identity.clone(),
                asked: asked.clone(),
            }));
        Ok(Session {
            connector: RustlsConnector::from(config),
            server_name: self
                .server_name
                .clone()
                .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string()),
            asked_for_certificate: asked,
            has_identity: self.identity.is_some(),
        })
    }
}

fn read_certificates(
    path: &Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSettingsError> {
    let pem = std::fs::read(path).map_err(|source| TlsSettingsError::Unreadable {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|detail| TlsSettingsError::NotPem {
            key,
            path: path.to_path_buf(),
            detail,
        })?;
    if certs.is_empty() {
        return Err(TlsSettingsError::NoCertificate {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Offers the configured client certificate, if any, and notes that the
/// broker asked for one (so that its refusal can be explained).
#[derive(Debug)]
struct ClientIdentity {
    key: Option<Arc<CertifiedKey>>,
    asked: Arc<AtomicBool>,
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// The TLS error inside an I/O error, if there is one.
pub fn tls_error(err: &io::Error) -> Option<&rustls::Error> {
    let mut inner: &(dyn std::error::Error + 'static) = err.get_ref()?;
    loop {
        if let Some(e) = inner.downcast_ref::<rustls::Error>() {
            return Some(e);
        }
        if let Some(e) = inner.downcast_ref::<io::Error>() {
            inner = e.get_ref()?;
            continue;
        }
        inner = inner.source()?;
    }
}

/// What to tell people about a failed TLS connection, or `None` when it
/// is not a TLS matter (the broker is down, the network is cut).
pub fn explain(err: &io::Error, session: &Session) -> Option<String> {
    let asked = session.asked_for_certificate.load(Ordering::SeqCst);
    let name = &session.server_name;
    let e = tls_error(err)?;
    Some(match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "its TLS certificate is signed by an unknown certificate authority: set amqp.tls.ca_file to that CA's PEM file".into(),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "its TLS certificate is not valid for the name '{name}': connect by a name the certificate lists, or set amqp.tls.server_name to one"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "its TLS certificate has expired: renew it on the broker (or check this machine's clock)".into(),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "its TLS certificate is not valid yet: check the certificate's dates and this machine's clock".into(),
            CertificateError::Revoked => "its TLS certificate is revoked: the broker needs a new one".into(),
            other => format!("its TLS certificate was refused ({other:?}): check the broker's certificate and amqp.tls.ca_file"),
        },
        rustls::Error::AlertReceived(alert) if !session.has_identity && (asked || is_client_cert_alert(*alert)) => format!(
            "the broker requires a client certificate (TLS alert {alert:?}): set amqp.tls.cert_file and amqp.tls.key_file"
        ),
        rustls::Error::AlertReceived(alert) if session.has_identity && is_client_cert_alert(*alert) => format!(
            "the broker refused the client certificate in amqp.tls.cert_file (TLS alert {alert:?}): use one signed by a CA the broker trusts"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } | rustls::Error::InappropriateHandshakeMessage { .. } => "it does not speak TLS on this port: use amqp:// for a plain port, or the broker's TLS port (usually 5671) with amqps://".into(),
        other => format!("TLS failed: {other}"),
    })
}

/// What a connection closed after the broker asked for a client
/// certificate and got none most likely means.
pub const RESET_AFTER_CERTIFICATE_REQUEST: &str = "the broker requires a client certificate (it asked for one, then closed the connection): set amqp.tls.cert_file and amqp.tls.key_file";

/// Whether `err` is the connection closing after the broker asked for a
/// client certificate that we did not have. TLS 1.3 refuses a missing
/// certificate after the handshake; when our first AMQP bytes are still
/// unread there, the broker's close reaches us as a reset and its alert is
/// lost. A broker that only may ask for one and goes away at that moment
/// looks the same, so the caller tries once more before believing it.
pub fn reset_after_certificate_request(err: &io::Error, session: &Session) -> bool {
    tls_error(err).is_none()
        && session.asked_for_certificate.load(Ordering::SeqCst)
        && !session.has_identity
        && matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        )
}

fn is_client_cert_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::CertificateRequired
            | AlertDescription::HandshakeFailure
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied
    )
}

pub(super) fn expects_tls(broker: String) -> LinkError {
    LinkError::Tls {
        broker,
        detail: "that port speaks TLS: use amqps:// (or the broker's plain port, usually 5672)"
            .into(),
    }
}

/// Whether a TLS handshake at `host:port` gets as far as the server's
/// answer (asked after an `amqp://` connection failed there).
pub(super) async fn speaks_tls(host: &str, port: u16, tls: Option<&Arc<Tls>>) -> bool {
    let Some(session) = tls.and_then(|t| t.session(host).ok()) else {
        return false;
    };
    let probe = async {
        let runtime = lapin::runtime::default_runtime().ok()?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await.ok()?.collect();
        let stream = AsyncTcpStream::connect(&runtime, addrs).await.ok()?;
        Some(
            match stream
                .into_rustls(&session.connector, &session.server_name)
                .await
            {
                Ok(_) => true,
                Err(e) => tls_error(&e).is_some_and(|e| {
                    !matches!(
                        e,
                        rustls_connector::rustls::Error::InvalidMessage(_)
                            | rustls_connector::rustls::Error::InappropriateMessage { .. }
                    )
                }),
            },
        )
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), probe).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        let config = AmqpConfig {
            url: "amqps://guest:guest@localhost:5671/%2f".into(),
            ..AmqpConfig::default()
        };
        let tls = Tls::load(&config)
            .unwrap()
            .expect("TLS for an amqps:// node");
        tls.session("localhost").unwrap()
    }

    #[test]
    fn a_reset_after_a_certificate_request_may_be_the_missing_certificate() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        let mut s = session();
        // Not asked: a reset is the network's or the broker's.
        assert!(!reset_after_certificate_request(&reset, &s));
        s.asked_for_certificate.store(true, Ordering::SeqCst);
        assert!(reset_after_certificate_request(&reset, &s));
        assert!(reset_after_certificate_request(&eof, &s));
        // Other failures after the request are not it.
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(!reset_after_certificate_request(&refused, &s));
        // With a certificate offered, a reset is not about a missing one.
        s.has_identity = true;
        assert!(!reset_after_certificate_request(&reset, &s));
        // None of these is a TLS error to explain on its own.
        assert_eq!(explain(&reset, &s), None);
        let why = RESET_AFTER_CERTIFICATE_REQUEST;
        assert!(
            why.starts_with("the broker requires a client certificate"),
            "{why}"
        );
        assert!(
            why.ends_with("set amqp.tls.cert_file and amqp.tls.key_file"),
            "{why}"
        );
    }
}
