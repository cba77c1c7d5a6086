//! TLS on both ports, and the node identity a peer certificate carries.
//!
//! The client port takes `--cert-file`/`--key-file` (and, to demand client certificates,
//! `--trusted-ca-file`); the peer port takes `--peer-cert-file`/`--peer-key-file`/
//! `--peer-trusted-ca-file` and always demands a certificate from the CA (mutual TLS): etcd's
//! flag names. A member's certificate names its node id as the DNS name `node-N.capkv` in its
//! subject alternative names ([`node_name`]), and the peer service accepts a message that says
//! it comes from node N only over a connection whose certificate names node N ([`names_node`]),
//! so node 3's certificate cannot speak for node 1.
//!
//! Connections a node opens to its peers use its own peer certificate; [`set_peer_client`] makes
//! that configuration process-wide, where [`crate::net`] opens every peer channel.
//! `cluster up --tls` makes a CA and one certificate per node ([`write_cluster_certs`]).
//!
//! Caveats: certificates are read at start (rotate by restarting the node); no revocation lists.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::Error;

/// A certificate, its key and, optionally, the CA whose certificates the other side must show.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trusted_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files from a flag triple: none given is no TLS; a certificate needs its key.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        trusted_ca: Option<&Path>,
        prefix: &str,
    ) -> Result<Option<TlsFiles>, Error> {
        match (cert, key) {
            (None, None) if trusted_ca.is_none() => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                trusted_ca: trusted_ca.map(Path::to_path_buf),
            })),
            _ => Err(Error::InvalidInput(format!(
                "TLS needs both --{prefix}cert-file and --{prefix}key-file (and --{prefix}trusted-ca-file only with them)"
            ))),
        }
    }

    /// The server side: this certificate, and client certificates demanded when a CA is given.
    pub fn server_config(&self) -> Result<ServerTlsConfig, Error> {
        let identity = Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.trusted_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }

    /// The client side of a member: trusts the CA and shows this certificate.
    pub fn client_config(&self) -> Result<ClientTlsConfig, Error> {
        let ca = self.trusted_ca.as_ref().ok_or_else(|| {
            Error::InvalidInput("a peer certificate needs --peer-trusted-ca-file, the CA of the members".into())
        })?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(ca)?))
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?)))
    }
}

/// A client's TLS settings (`--cacert`, and `--cert`/`--key` for nodes that demand one).
pub fn client_config(cacert: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<ClientTlsConfig, Error> {
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(cacert)?));
    match (cert, key) {
        (Some(cert), Some(key)) => config = config.identity(Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        _ => {
            return Err(Error::InvalidInput(
                "a client certificate needs both --cert and --key".into(),
            ))
        }
    }
    Ok(config)
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::InvalidInput(format!("cannot read {} ({e})", path.display())))
}

static PEER_CLIENT: OnceLock<ClientTlsConfig> = OnceLock::new();

/// Makes every peer channel this process opens use `config` (a node with peer TLS, once).
pub fn set_peer_client(config: ClientTlsConfig) {
    let _ = PEER_CLIENT.set(config);
}

/// The TLS settings of peer channels, when this process is a node with peer TLS.
pub fn peer_client() -> Option<&'static ClientTlsConfig> {
    PEER_CLIENT.get()
}

/// The DNS name that binds a certificate to node `id`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}.capkv")
}

/// Whether `cert` (the first certificate a peer showed) names node `id`.
pub fn names_node(cert: &CertificateDer<'_>, id: u64) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_name(id)) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Writes a CA (`ca.pem`, `ca.key`) and, for nodes 1..=nodes, `node-N.pem` and `node-N.key`
/// under `dir`: each node certificate names `node-N.capkv`, `localhost` and 127.0.0.1, and serves
/// as both server and client certificate. Keys are mode 0600.
pub fn write_cluster_certs(dir: &Path, nodes: u64) -> Result<(), Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let failed = |e: rcgen::Error| Error::Internal(format!("cannot make a certificate: {e}"));
    crate::storage::create_private_dir(dir)
        .map_err(|e| Error::InvalidInput(format!("cannot create {}: {e}", dir.display())))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "capkv cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(failed)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(failed)?;
    write(dir, "ca.pem", &ca.pem(), false)?;
    write(dir, "ca.key", &ca_key_pem, true)?;
    for id in 1..=nodes {
        let mut params = CertificateParams::new(vec![node_name(id), "localhost".into()]).map_err(failed)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("capkv node {id}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &ca).map_err(failed)?;
        write(dir, &format!("node-{id}.pem"), &cert.pem(), false)?;
        write(dir, &format!("node-{id}.key"), &key.serialize_pem(), true)?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str, private: bool) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(path: &Path) -> CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_file(path).expect("a PEM certificate")
    }

    #[test]
    fn a_node_certificate_names_its_node_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        write_cluster_certs(dir.path(), 3).unwrap();
        let node3 = der(&dir.path().join("node-3.pem"));
        assert!(names_node(&node3, 3));
        assert!(!names_node(&node3, 1), "node 3's certificate cannot speak for node 1");
        assert!(
            !names_node(&CertificateDer::from(vec![1, 2, 3]), 3),
            "garbage names nobody"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("node-1.key"), 0o600);
        assert_eq!(mode("ca.key"), 0o600);
        assert!(TlsFiles {
            cert: dir.path().join("node-1.pem"),
            key: dir.path().join("node-1.key"),
            trusted_ca: Some(dir.path().join("ca.pem")),
        }
        .client_config()
        .is_ok());
    }

    #[test]
    fn flags_come_in_pairs() {
        let p = Path::new("x");
        assert!(TlsFiles::from_flags(None, None, None, "").unwrap().is_none());
        assert!(TlsFiles::from_flags(Some(p), Some(p), None, "").unwrap().is_some());
        let err = TlsFiles::from_flags(Some(p), None, None, "peer-").unwrap_err();
        assert!(err.to_string().contains("--peer-key-file"), "{err}");
        assert!(TlsFiles::from_flags(None, None, Some(p), "").is_err());
    }
}
