//! SIP over TLS (RFC 3261 26.2, RFC 5630): the server's certificate and key, the optional
//! client-certificate check (mutual TLS with a PBX, a known party), and the rustls
//! configuration built from them. No sockets here: the transport takes the configuration, and
//! a reload builds a new one and swaps it in, so a renewed certificate (an ACME client's) is
//! served to the next connection while connections already up keep theirs.
//!
//! rustls with its default provider (aws-lc-rs, already in the tree through the HTTP client),
//! TLS 1.2 and 1.3 only, no OpenSSL.
//!
//! The same files serve the connections ivrd opens itself (a dialog's request when the peer's
//! connection is gone): the server is checked against `server_ca`, or the system's roots
//! (rustls-native-certs) without it, and our certificate is presented for mutual TLS.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the server's TLS material is (`[tls]`), and how clients are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: CA certificates that client certificates must chain to. Without it, clients are
    /// not asked for one.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: a client without a valid certificate is refused (mutual TLS).
    /// Otherwise a client may present none, but one it presents must be valid.
    pub require_client_cert: bool,
    /// PEM: CA certificates the servers we connect to must chain to. Without it, the
    /// system's roots.
    pub server_ca: Option<PathBuf>,
}

/// The two sides of TLS, built from the same files: accepting (our certificate, the client
/// check) and connecting (the server check, our certificate as the client's).
#[derive(Clone, Debug)]
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

/// Why the TLS material cannot be used; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate in it (a PEM file with -----BEGIN CERTIFICATE----- blocks)")]
    NoCertificate(PathBuf),
    #[error("{0}: no private key in it (PEM: PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")]
    NoKey(PathBuf),
    #[error("{key}: this key does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Both configurations `files` describe.
pub fn configs(files: &TlsFiles) -> Result<TlsConfigs, TlsError> {
    let certified = certified_key(files)?;
    Ok(TlsConfigs {
        server: server_config_with(files, certified.clone())?,
        client: client_config_with(files, certified)?,
    })
}

/// The server configuration for SIP over TLS: our certificate, TLS 1.2 and 1.3, and the
/// client check `files` asks for.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(files, certified_key(files)?)
}

/// The client configuration for connections we open: the server must chain to `server_ca`
/// (else a system root) and name the address we connect to; we present our certificate.
fn client_config_with(
    files: &TlsFiles,
    certified: Arc<CertifiedKey>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &files.server_ca {
        Some(ca) => read_roots(ca)?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            // Unreadable system certificates are skipped (rustls-native-certs reports them);
            // a server that needs one of them fails its handshake with a clear log line.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            roots
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Invalid {
            path: files.cert.clone(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    Ok(Arc::new(builder.with_client_cert_resolver(Arc::new(
        rustls::sign::SingleCertAndKey::from(certified),
    ))))
}

/// Our certificate and key, checked to belong together.
fn certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let provider = provider();
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey(files.key.clone()),
        source => TlsError::Read {
            path: files.key.clone(),
            source,
        },
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Invalid {
            path: files.key.clone(),
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(certs, signing);
    // A renewed certificate with the old key (or the other way round) would fail every
    // handshake; say so when it is loaded instead.
    certified.keys_match().map_err(|_| TlsError::KeyMismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
    })?;
    Ok(Arc::new(certified))
}

fn server_config_with(
    files: &TlsFiles,
    certified: Arc<CertifiedKey>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Invalid {
            path: files.cert.clone(),
            message: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = read_roots(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Invalid {
                path: ca.clone(),
                message: e.to_string(),
            })?)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(builder.with_cert_resolver(Arc::new(
        rustls::sign::SingleCertAndKey::from(certified),
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and key for `names`, as PEM.
    pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_certificate_and_its_key_load() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&["ivrd.test", "127.0.0.1"]);
        let files = TlsFiles {
            cert: write(dir.path(), "cert.pem", &cert),
            key: write(dir.path(), "key.pem", &key),
            client_ca: None,
            require_client_cert: false,
            server_ca: None,
        };
        server_config(&files).unwrap();
        // Mutual TLS against a CA file.
        let (ca, _) = self_signed(&["pbx-ca.test"]);
        let files = TlsFiles {
            client_ca: Some(write(dir.path(), "ca.pem", &ca)),
            require_client_cert: true,
            ..files
        };
        server_config(&files).unwrap();
    }

    #[test]
    fn bad_material_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&["a.test"]);
        let (_, other_key) = self_signed(&["b.test"]);
        let files = |c: &str, k: &str| TlsFiles {
            cert: write(dir.path(), "c.pem", c),
            key: write(dir.path(), "k.pem", k),
            client_ca: None,
            require_client_cert: false,
            server_ca: None,
        };
        let err = server_config(&files(&cert, &other_key)).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not belong"), "{err}");
        let err = server_config(&files("not pem", &key)).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate(_)), "{err}");
        let err = server_config(&files(&cert, &cert)).unwrap_err();
        assert!(matches!(err, TlsError::NoKey(_)), "{err}");
        let missing = TlsFiles {
            cert: dir.path().join("missing.pem"),
            ..files(&cert, &key)
        };
        let err = server_config(&missing).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
