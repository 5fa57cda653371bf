//! Mutual TLS as Kong's data planes do it (`kong/clustering/utils.lua` `connect_cp`):
//! `shared` mode presents the cluster certificate and expects the control plane to present the
//! same one (SNI `kong_clustering`); `pki` mode presents this node's certificate and verifies
//! the control plane's against the CA and the server name.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// `KONG_CLUSTER_MTLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MtlsMode {
    /// One certificate shared by the control plane and every data plane.
    Shared,
    /// Certificates signed by a CA (`KONG_CLUSTER_CA_CERT`).
    Pki,
}

/// PEM from a file path, or the PEM itself (Kong accepts both in its `cluster_*` settings).
fn pem_bytes(setting: &str, value: &str) -> anyhow::Result<Vec<u8>> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value).map_err(|e| anyhow::anyhow!("{setting} {value}: cannot read it ({e})"))
}

/// The certificates of a PEM setting, at least one.
pub fn load_certs(setting: &str, value: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = pem_bytes(setting, value)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{setting}: not PEM certificates ({e})"))?;
    if certs.is_empty() {
        anyhow::bail!("{setting}: no \"-----BEGIN CERTIFICATE-----\" block in it");
    }
    Ok(certs)
}

/// The private key of a PEM setting.
pub fn load_key(setting: &str, value: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = pem_bytes(setting, value)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| anyhow::anyhow!("{setting}: no usable PEM private key in it ({e})"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration of one mode.
pub fn client_config(
    mode: MtlsMode,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: Option<&[CertificateDer<'static>]>,
) -> anyhow::Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match mode {
        MtlsMode::Shared => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                pinned: cert_chain[0].clone(),
                provider,
            })),
        MtlsMode::Pki => {
            let mut roots = RootCertStore::empty();
            for cert in ca.ok_or_else(|| {
                anyhow::anyhow!("KONG_CLUSTER_MTLS=pki needs KONG_CLUSTER_CA_CERT, the CA that signed the control plane's certificate")
            })? {
                roots.add(cert.clone()).map_err(|e| {
                    anyhow::anyhow!("KONG_CLUSTER_CA_CERT: unusable CA certificate ({e})")
                })?;
            }
            builder.with_root_certificates(roots)
        }
    };
    builder.with_client_auth_cert(cert_chain, key).map_err(|e| {
        anyhow::anyhow!("KONG_CLUSTER_CERT and KONG_CLUSTER_CERT_KEY do not go together ({e})")
    })
}

/// `shared` mode: the control plane must present exactly the cluster certificate. (Kong's data
/// planes trust that one certificate and send SNI `kong_clustering`; a pin says the same thing
/// without relying on OpenSSL's common-name fallback, which webpki does not have.)
#[derive(Debug)]
struct PinnedCertificate {
    pinned: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::General(
                "the control plane's certificate is not KONG_CLUSTER_CERT (KONG_CLUSTER_MTLS=shared: both sides use the same cluster certificate; with certificates from a CA use KONG_CLUSTER_MTLS=pki)".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
