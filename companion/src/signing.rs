//! The exporter's Ed25519 signing key: every export carries a `signature` metadata, standard
//! base64 of the Ed25519 signature over the export's manifest
//! ([`fallback_core::signature::ExportManifest`]: version, revision, sha256 of the stored bytes,
//! export time, key id), and a `key-id` metadata naming the key, which filters configured with
//! the matching key in `public_keys` require.
//!
//! The key file (`FALLBACK_SIGNING_KEY_FILE`) holds either the PKCS#8 PEM that
//! `openssl genpkey -algorithm ed25519` (or `fallback-companion keygen`) writes, or the 32-byte
//! seed in standard base64. The private key never appears in logs, errors or `Debug` output.

use anyhow::{bail, Context};
use base64::Engine;
use fallback_core::signature::{PublicKey, Signature};
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// An Ed25519 private key that signs exports.
#[derive(Clone)]
pub struct SigningKey {
    pair: Arc<Ed25519KeyPair>,
}

/// Shows the public half only.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads the key file; errors name the file and the expected forms, never its contents.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the signing key file {}", path.display()))?;
        Self::parse(&text).with_context(|| {
            format!(
                "the signing key file {} holds no usable Ed25519 private key: give the PKCS#8 PEM \
                 `openssl genpkey -algorithm ed25519` writes, or the 32-byte seed in base64",
                path.display()
            )
        })
    }

    /// A PKCS#8 PEM `PRIVATE KEY` block, or the base64 32-byte seed.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        let b64 = base64::engine::general_purpose::STANDARD;
        let pair = if let Some(rest) = text.strip_prefix(PEM_BEGIN) {
            let Some(body) = rest.trim_end().strip_suffix(PEM_END) else {
                bail!("the PEM block is not a complete PRIVATE KEY block");
            };
            let joined: String = body.split_ascii_whitespace().collect();
            let der = b64
                .decode(joined)
                .map_err(|_| anyhow::anyhow!("the PEM block is not base64"))?;
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                .map_err(|_| anyhow::anyhow!("the PEM block is not an Ed25519 PKCS#8 key"))?
        } else if text.starts_with("-----BEGIN") {
            bail!("only an unencrypted PKCS#8 \"PRIVATE KEY\" PEM block is supported");
        } else {
            let seed = b64
                .decode(text)
                .map_err(|_| anyhow::anyhow!("the file is neither PEM nor base64"))?;
            if seed.len() != 32 {
                bail!("a base64 seed must be 32 bytes, got {}", seed.len());
            }
            Ed25519KeyPair::from_seed_unchecked(&seed)
                .map_err(|_| anyhow::anyhow!("the seed is not usable"))?
        };
        Ok(SigningKey {
            pair: Arc::new(pair),
        })
    }

    /// A new random key as a PKCS#8 PEM, for `fallback-companion keygen`.
    pub fn generate_pem() -> anyhow::Result<String> {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("no randomness to generate a key"))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = format!("{PEM_BEGIN}\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str(PEM_END);
        pem.push('\n');
        Ok(pem)
    }

    /// Standard base64 of the Ed25519 signature over `bytes`.
    pub fn sign(&self, bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.pair.sign(bytes).as_ref())
    }

    /// This key's id: the `key-id` metadata ([`PublicKey::key_id`]).
    pub fn key_id(&self) -> String {
        self.public_key().key_id()
    }

    /// Signs `metadata` as the export of `version`: sets `key-id`, then `signature` over the
    /// manifest (revision, sha256 and export time as they stand in `metadata`).
    pub fn sign_export(
        &self,
        metadata: &mut fallback_core::export::ExportMetadata,
        version: &str,
    ) -> anyhow::Result<()> {
        let key_id = self.key_id();
        let manifest = metadata
            .manifest(version, &key_id)
            .to_bytes()
            .with_context(|| format!("cannot sign the export of version {version:?}"))?;
        metadata.signature = Some(self.sign(&manifest));
        metadata.key_id = Some(key_id);
        Ok(())
    }

    /// The public key, as the filter's `public_key` takes it (base64 of the 32 raw bytes).
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.pair.public_key().as_ref())
    }

    /// The public key, checked by the filter's own parser.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::parse(&self.public_key_base64()).expect("ring's Ed25519 public key is valid")
    }

    /// Whether `signature` (base64) is this key's over `body`, with the filter's verifier.
    pub fn verifies(&self, body: &[u8], signature: &str) -> bool {
        Signature::parse(signature)
            .is_ok_and(|s| fallback_core::signature::verify(&self.public_key(), body, &s).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 TEST 1's private key, as `openssl genpkey -algorithm ed25519` writes keys (v1
    /// PKCS#8, no public key).
    const OPENSSL_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
    const TEST1_SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
    const TEST1_PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    #[test]
    fn openssl_pem_and_base64_seed_are_the_same_key() {
        let pem = SigningKey::parse(OPENSSL_PEM).unwrap();
        let seed = SigningKey::parse(&format!("{TEST1_SEED}\n")).unwrap();
        assert_eq!(pem.public_key_base64(), TEST1_PUBLIC);
        assert_eq!(seed.public_key_base64(), TEST1_PUBLIC);
        // RFC 8032 TEST 1: the empty message's signature.
        assert_eq!(
            pem.sign(b""),
            "5VZDAMNgrHKQhuLMgG6CioSHfx645dl02HPgZSJJAVVfuIIVkKM7rMYeOXAc+bRr0lv18FlbviRlUUFDjnoQCw=="
        );
        let body = br#"{"_format_version":"3.0"}"#;
        assert!(pem.verifies(body, &seed.sign(body)));
        assert!(!pem.verifies(b"other", &seed.sign(body)));
    }

    #[test]
    fn generated_keys_load_back() {
        let pem = SigningKey::generate_pem().unwrap();
        assert!(pem.starts_with(PEM_BEGIN));
        let key = SigningKey::parse(&pem).unwrap();
        assert!(key.verifies(b"x", &key.sign(b"x")));
    }

    #[test]
    fn bad_files_say_why_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        for (contents, needle) in [
            ("c2VjcmV0LXNlZWQ=", "32 bytes"),
            ("s3cr3t not base64", "neither PEM nor base64"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----",
                "PKCS#8",
            ),
            ("-----BEGIN PRIVATE KEY-----\nAAAA", "complete"),
        ] {
            let path = dir.path().join("key");
            std::fs::write(&path, contents).unwrap();
            let err = format!("{:#}", SigningKey::load(&path).unwrap_err());
            assert!(err.contains(needle), "{err}");
            assert!(
                err.contains("FALLBACK") || err.contains("openssl genpkey"),
                "{err}"
            );
            assert!(
                !err.contains("s3cr3t") && !err.contains("c2VjcmV0"),
                "{err}"
            );
        }
        let missing = SigningKey::load(&dir.path().join("none")).unwrap_err();
        assert!(missing
            .to_string()
            .contains("cannot read the signing key file"));
    }

    #[test]
    fn debug_shows_only_the_public_key() {
        let key = SigningKey::parse(TEST1_SEED).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains(TEST1_PUBLIC), "{shown}");
        assert!(
            !shown.contains(TEST1_SEED) && !shown.contains("nWGxne"),
            "{shown}"
        );
    }
}
