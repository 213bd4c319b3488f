//! rustls configurations for SIP over TLS, built from PEM files.
//!
//! - Our identity (`[sip.tls]`: certificate chain and key) is presented both
//!   as TLS server and, for mutual TLS, as TLS client.
//! - Each TLS trunk's CA (`[trunk.tls] ca`) is the only trust anchor for that
//!   trunk, in both directions: connections we open verify the peer's
//!   certificate and its name (`server_name`) against it; connections the
//!   peer opens must present a client certificate it verifies when
//!   `require_client_cert` is set (rustls' `WebPkiClientVerifier`).
//!
//! **Which trunk an incoming TLS connection belongs to** is decided by its
//! source address, before the handshake: the TLS trunk whose sources match
//! (longest prefix, then configuration order, as
//! [`Trunks::trunk_for`](super::trunk::Trunks::trunk_for)). Only that trunk's
//! CA can then verify the client, so a connection is accepted only when source
//! address *and* certificate agree on the trunk; a certificate from another
//! trunk's CA is refused as an unknown issuer. A source that matches no TLS
//! trunk is refused before any handshake.
//!
//! Errors name the configuration field and the file (`trunk[1].tls.ca:
//! /etc/relay/ca.pem: no certificate found`).

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use ipnet::IpNet;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider, server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

use super::{
    transport::TransportKind,
    trunk::{SipConfig, Trunks},
};

/// What a connection we open to a TLS trunk needs: the name to check, and a
/// client configuration trusting only that trunk's CA and presenting our
/// certificate.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    pub trunk: Arc<str>,
    pub server_name: ServerName<'static>,
    pub config: Arc<ClientConfig>,
}

/// Server side for one TLS trunk.
#[derive(Debug)]
struct Incoming {
    trunk: Arc<str>,
    sources: Vec<IpNet>,
    config: Arc<ServerConfig>,
}

/// All TLS configurations of the relay, loaded once at start.
#[derive(Debug)]
pub struct TlsSetup {
    incoming: Vec<Incoming>,
    targets: HashMap<Arc<str>, TlsTarget>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable, or holds nothing usable.
    #[error("{field}: {}: {message}", path.display())]
    Pem {
        field: String,
        path: PathBuf,
        message: String,
    },
    /// rustls refused what the files hold (e.g. key does not match the
    /// certificate, CA certificate not usable as a trust anchor).
    #[error("{field}: {message}")]
    Config { field: String, message: String },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain (one or more CERTIFICATE blocks).
pub fn load_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |message: String| TlsError::Pem {
        field: field.into(),
        path: path.into(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| pem(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem("no CERTIFICATE found".into()));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1 PEM).
pub fn load_key(path: &Path, field: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = |message: String| TlsError::Pem {
        field: field.into(),
        path: path.into(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| pem(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => pem("no PRIVATE KEY found".into()),
        e => pem(format!("bad PEM: {e}")),
    })
}

/// Reads trust anchors (one or more CERTIFICATE blocks).
pub fn load_roots(path: &Path, field: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, field)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            field: field.into(),
            path: path.into(),
            message: format!("not usable as a CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

impl TlsSetup {
    /// Loads our identity and every TLS trunk's CA, and builds one server and
    /// one client configuration per TLS trunk. `Ok(None)` when nothing uses
    /// TLS. Call it after [`Trunks::resolve`] so host-name peers have their
    /// addresses as default sources.
    pub fn load(sip: &SipConfig, trunks: &Trunks) -> Result<Option<TlsSetup>, TlsError> {
        let tls_trunks: Vec<_> = trunks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.transport == TransportKind::Tls)
            .collect();
        let Some(identity) = &sip.tls else {
            if tls_trunks.is_empty() && sip.listen_tls.is_empty() {
                return Ok(None);
            }
            return Err(TlsError::Config {
                field: "sip.tls".into(),
                message: "TLS is used but [sip.tls] (cert, key) is missing".into(),
            });
        };
        let chain = load_certs(&identity.cert, "sip.tls.cert")?;
        let key = load_key(&identity.key, "sip.tls.key")?;
        let provider = provider();
        let mut incoming = Vec::new();
        let mut targets = HashMap::new();
        for (i, trunk) in tls_trunks {
            let Some(tls) = &trunk.tls else {
                return Err(TlsError::Config {
                    field: format!("trunk[{i}].tls"),
                    message: "missing".into(),
                });
            };
            let ca_field = format!("trunk[{i}].tls.ca");
            let roots = load_roots(&tls.ca, &ca_field)?;
            let config_err = |field: &str, e: rustls::Error| TlsError::Config {
                field: field.into(),
                message: e.to_string(),
            };

            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| config_err("sip.tls", e))?;
            let builder = if tls.require_client_cert {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                        .build()
                        .map_err(|e| TlsError::Config {
                            field: ca_field.clone(),
                            message: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_no_client_auth()
            };
            let server = builder
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| config_err("sip.tls.key", e))?;

            let client = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| config_err("sip.tls", e))?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| config_err("sip.tls.key", e))?;

            incoming.push(Incoming {
                trunk: trunk.name.clone(),
                sources: trunk.effective_sources(),
                config: Arc::new(server),
            });
            targets.insert(
                trunk.name.clone(),
                TlsTarget {
                    trunk: trunk.name.clone(),
                    server_name: tls.server_name.clone(),
                    config: Arc::new(client),
                },
            );
        }
        Ok(Some(TlsSetup { incoming, targets }))
    }

    /// What to use when connecting to `trunk`.
    pub fn target(&self, trunk: &str) -> Option<&TlsTarget> {
        self.targets.get(trunk)
    }

    /// The trunk an incoming TLS connection from `source` belongs to, and
    /// the server configuration to accept it with (see the module docs).
    pub fn incoming_for(&self, source: IpAddr) -> Option<(Arc<str>, Arc<ServerConfig>)> {
        let source = source.to_canonical();
        let mut best: Option<(u8, &Incoming)> = None;
        for inc in &self.incoming {
            if let Some(len) = inc
                .sources
                .iter()
                .filter(|n| n.contains(&source))
                .map(IpNet::prefix_len)
                .max()
                && best.is_none_or(|(b, _)| len > b)
            {
                best = Some((len, inc));
            }
        }
        best.map(|(_, inc)| (inc.trunk.clone(), inc.config.clone()))
    }
}

/// One line saying why a TLS handshake (or the first read after it, where
/// TLS 1.3 reports the peer's verdict on our client certificate) failed.
pub fn describe_error(err: &io::Error) -> String {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(e) => describe_rustls(e),
        None => match err.kind() {
            io::ErrorKind::UnexpectedEof => "connection closed during the handshake".into(),
            io::ErrorKind::TimedOut => "handshake timed out".into(),
            _ => err.to_string(),
        },
    }
}

/// Short cause first, rustls' own words after.
pub fn describe_rustls(e: &rustls::Error) -> String {
    use rustls::Error as E;
    let why = match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "unknown CA: certificate not issued by the trunk's CA"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "name mismatch: certificate not valid for the trunk's server_name"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "certificate not valid for this purpose (extended key usage)"
            }
            _ => "bad certificate",
        },
        E::NoCertificatesPresented => "no client certificate: this trunk requires mutual TLS",
        E::AlertReceived(a) => match a {
            AlertDescription::UnknownCA => "peer refused our certificate: unknown CA",
            AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied => "peer refused our certificate",
            AlertDescription::CertificateRequired => {
                "peer requires a client certificate we did not send"
            }
            AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion => {
                "peer refused the handshake (no common version or cipher suite)"
            }
            _ => "peer sent an alert",
        },
        E::PeerIncompatible(_) => "no common TLS version or cipher suite",
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => "not TLS or malformed TLS",
        _ => "TLS error",
    };
    format!("{why} ({e})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = load_certs(&missing, "trunk[1].tls.ca")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("trunk[1].tls.ca: "), "{e}");
        assert!(e.contains("nope.pem"), "{e}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello\n").unwrap();
        let e = load_roots(&garbage, "trunk[0].tls.ca")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("garbage.pem") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        let e = load_key(&garbage, "sip.tls.key").unwrap_err().to_string();
        assert!(
            e.starts_with("sip.tls.key: ") && e.contains("no PRIVATE KEY"),
            "{e}"
        );

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = load_certs(&broken, "sip.tls.cert").unwrap_err().to_string();
        assert!(e.contains("broken.pem") && e.contains("bad PEM"), "{e}");
    }

    #[test]
    fn errors_are_described() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(describe_rustls(&e).starts_with("unknown CA"));
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert!(describe_error(&io).starts_with("no client certificate"));
        let io = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(
            describe_error(&io),
            "connection closed during the handshake"
        );
    }
}
