//! TLS for servers and clients (rustls with the ring provider). Over TLS, HTTP/2 and HTTP/1.1
//! are negotiated with ALPN, so one port serves both, as it does in cleartext.
//!
//! ```no_run
//! # fn demo(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), connect_plugin_rpc::Error> {
//! use connect_plugin_rpc::{Channel, Server, tls};
//!
//! let server = Server::new().tls(tls::ServerTls::from_pem(cert_pem, key_pem)?);
//! let channel = Channel::builder("https://localhost:8443")
//!     .tls(tls::ClientTls::with_root_certificates_pem(cert_pem)?)
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! It only builds rustls configurations: accepting TLS connections is [`crate::server`]'s and
//! connecting over TLS is [`crate::channel`]'s. Reading certificates from files or generating them
//! is left to the caller.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // An explicit provider: the process-wide default panics when a dependency tree enables
    // more than one.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::invalid_argument(format!("{what}: cannot read PEM certificates: {e}"))
        })?;
    if certs.is_empty() {
        return Err(Error::invalid_argument(format!(
            "{what}: no `-----BEGIN CERTIFICATE-----` block found in the PEM data"
        )));
    }
    Ok(certs)
}

/// A store of the CA certificates in `pem`.
fn roots(pem: &[u8], what: &str) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(pem, what)? {
        roots
            .add(cert)
            .map_err(|e| Error::invalid_argument(format!("{what}: unusable certificate: {e}")))?;
    }
    Ok(roots)
}

/// A certificate chain and its private key, read from PEM; `who` is "server" or "client".
fn identity(
    chain_pem: &[u8],
    key_pem: &[u8],
    who: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let chain = certificates(chain_pem, &format!("{who} certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        Error::invalid_argument(format!("{who} private key: cannot read the PEM key: {e}"))
    })?;
    Ok((chain, key))
}

/// The error of a certificate and key that do not go together.
fn unusable(who: &str, e: &rustls::Error) -> Error {
    Error::invalid_argument(format!(
        "the {who} certificate and private key do not form a usable identity: {e}"
    ))
}

/// A server's TLS identity and settings.
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("alpn", &self.config.alpn_protocols)
            .finish()
    }
}

impl ServerTls {
    /// A server identity from a PEM certificate chain (leaf first) and its PEM private key.
    ///
    /// # Errors
    /// `invalid_argument` naming what is wrong with the certificate or key.
    pub fn from_pem(cert_chain_pem: &[u8], private_key_pem: &[u8]) -> Result<Self, Error> {
        let (chain, key) = identity(cert_chain_pem, private_key_pem, "server")?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("TLS protocol versions: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| unusable("server", &e))?;
        Ok(Self::from_config(config))
    }

    /// Wraps a rustls configuration (for client authentication and the like). ALPN is set to
    /// `h2` and `http/1.1` if the configuration names none.
    pub fn from_config(mut config: rustls::ServerConfig) -> Self {
        if config.alpn_protocols.is_empty() {
            config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        }
        Self {
            config: Arc::new(config),
        }
    }
}

/// Whether a server over mutual TLS insists on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate signed by the client CA.
    Required,
    /// A client may present none; one it presents must be signed by the client CA (a foreign
    /// or expired certificate is refused either way). For servers some of whose clients
    /// authenticate otherwise (a host's launched plugins, with their join tokens).
    Optional,
}

impl ServerTls {
    /// A server identity, as [`ServerTls::from_pem`], that verifies client certificates
    /// against the CA certificates in `client_ca_pem` (mutual TLS). Handlers see a verified
    /// client certificate through [`crate::Request::peer_certificate`].
    ///
    /// # Errors
    /// `invalid_argument` naming what is wrong with a certificate, the key or the CA.
    pub fn mutual_from_pem(
        cert_chain_pem: &[u8],
        private_key_pem: &[u8],
        client_ca_pem: &[u8],
        client_auth: ClientAuth,
    ) -> Result<Self, Error> {
        let (chain, key) = identity(cert_chain_pem, private_key_pem, "server")?;
        let roots = roots(client_ca_pem, "client CA")?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        );
        let verifier = match client_auth {
            ClientAuth::Required => verifier,
            ClientAuth::Optional => verifier.allow_unauthenticated(),
        }
        .build()
        .map_err(|e| Error::invalid_argument(format!("client CA: {e}")))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("TLS protocol versions: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| unusable("server", &e))?;
        Ok(Self::from_config(config))
    }
}

/// A client certificate a server verified (mutual TLS): what a handler can trust about the
/// caller. With [`ServerTls::mutual_from_pem`] it chains to the client CA and is valid now;
/// with [`ServerTls::from_config`], the configuration's verifier decides.
#[derive(Debug)]
pub struct PeerCertificate(CertificateDer<'static>);

impl PeerCertificate {
    pub(crate) fn new(der: CertificateDer<'static>) -> Self {
        Self(der)
    }

    /// The certificate, DER-encoded.
    pub fn der(&self) -> &[u8] {
        &self.0
    }

    /// Whether `name` can be named by a certificate at all (a valid DNS name).
    pub fn is_valid_name(name: &str) -> bool {
        rustls::pki_types::DnsName::try_from(name).is_ok()
    }

    /// Whether the certificate names exactly `name`: a DNS subject alternative name equal to
    /// it (case-insensitively, as DNS). A wildcard name (`*.example`) names no one: a
    /// certificate that would also be valid for another name in `name`'s domain is refused.
    pub fn is_valid_for_name(&self, name: &str) -> bool {
        let valid_for = |candidate: &str| {
            rustls::pki_types::ServerName::try_from(candidate).is_ok_and(|server_name| {
                webpki::EndEntityCert::try_from(&self.0)
                    .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
            })
        };
        if !valid_for(name) {
            return false;
        }
        // A wildcard matches any first label: probe one no certificate would name exactly.
        match name.split_once('.') {
            Some((_, domain)) => !valid_for(&format!("x--not-a-plugin-name.{domain}")),
            None => true,
        }
    }
}

/// A client's TLS trust settings.
#[derive(Clone)]
pub struct ClientTls {
    pub(crate) config: rustls::ClientConfig,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts exactly the CA certificates in `pem` (for example a plugin host's own CA or a
    /// self-signed certificate).
    ///
    /// # Errors
    /// `invalid_argument` if the PEM data holds no usable certificate.
    pub fn with_root_certificates_pem(pem: &[u8]) -> Result<Self, Error> {
        let roots = roots(pem, "root certificates")?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("TLS protocol versions: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { config })
    }

    /// Trusts the CA certificates in `roots_pem`, as
    /// [`ClientTls::with_root_certificates_pem`], and presents the client certificate
    /// `cert_chain_pem` (leaf first) with its key, for servers that require mutual TLS.
    ///
    /// # Errors
    /// `invalid_argument` naming what is wrong with a certificate or the key.
    pub fn mutual_from_pem(
        roots_pem: &[u8],
        cert_chain_pem: &[u8],
        private_key_pem: &[u8],
    ) -> Result<Self, Error> {
        let roots = roots(roots_pem, "root certificates")?;
        let (chain, key) = identity(cert_chain_pem, private_key_pem, "client")?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("TLS protocol versions: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| unusable("client", &e))?;
        Ok(Self { config })
    }

    /// Wraps a rustls configuration (client certificates, custom verification). ALPN is set by
    /// the channel according to its HTTP version.
    pub fn from_config(config: rustls::ClientConfig) -> Self {
        Self { config }
    }
}
