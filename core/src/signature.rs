//! Ed25519 signatures over exports: the public key the filter is configured with, the
//! signature stored beside an export, and the check that the one made the other.
//!
//! Both travel as text: the signature as standard base64 of its 64 bytes; the public key as
//! standard base64 of its 32 raw bytes, or as the PEM (SPKI) `-----BEGIN PUBLIC KEY-----` block
//! that `openssl pkey -pubout` prints for an Ed25519 key. Parsing never panics on any input.
//!
//! What is signed is not the body alone but an [`ExportManifest`]: a few lines naming the
//! version, the revision, the body's sha256, the export time and the signing key's
//! [`KeyId`], so that none of that metadata can be swapped under a valid signature (an old
//! export replayed under a new revision no longer verifies). The body is covered through its
//! sha256, which the filter checks against the bytes it fetched.
//!
//! Verification is strict in the sense of RFC 8032 §5.1.7 plus the usual hardening: a
//! non-canonical `S`, a public key that is not a point, and a small-order ("weak") public key
//! are all refused.

use crate::wire::decode_base64;
use std::fmt;

/// Bytes in a raw Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes in an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// DER of `SubjectPublicKeyInfo { algorithm: id-Ed25519 (1.3.101.112), subjectPublicKey }` up
/// to the 32 key bytes (RFC 8410 §4).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PEM_END: &str = "-----END PUBLIC KEY-----";

/// Why a key or signature was not accepted. Messages never quote the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The text is not standard base64.
    #[error("{0} is not standard base64")]
    NotBase64(&'static str),
    /// A PEM block that is not a complete `PUBLIC KEY` block.
    #[error("the PEM block is not a complete -----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY----- block")]
    BadPem,
    /// A DER public key that is not an Ed25519 `SubjectPublicKeyInfo`.
    #[error("the public key is not an Ed25519 SubjectPublicKeyInfo (RFC 8410)")]
    NotEd25519Spki,
    /// The public key has the wrong length.
    #[error("an Ed25519 public key is 32 bytes (base64) or a PEM PUBLIC KEY block, got {0} bytes")]
    PublicKeyLength(usize),
    /// 32 bytes that are not an Ed25519 point, or a point of small order.
    #[error("the public key is not a usable Ed25519 point")]
    InvalidPublicKey,
    /// The signature has the wrong length.
    #[error("an Ed25519 signature is 64 bytes, got {0} bytes")]
    SignatureLength(usize),
    /// The signature is well formed but was not made by this key over these bytes.
    #[error("the signature does not match the body and the configured public key")]
    Mismatch,
    /// A manifest field holds a line break or another control character, so the manifest
    /// could be read two ways.
    #[error("the export's {0} holds a control character: it cannot be part of a signed manifest")]
    ManifestField(&'static str),
}

/// Hex digits in a [`KeyId`].
pub const KEY_ID_LEN: usize = 16;

/// First line of every [`ExportManifest`]: names the format, so a signature over one format
/// can never be read as a signature over another.
pub const MANIFEST_FORMAT: &str = "fallback-export-manifest/1";

/// What an export's signature covers, rendered by [`ExportManifest::to_bytes`] as
/// `fallback-export-manifest/1` then one `name: value` line each for `version`, `revision`,
/// `sha256`, `exported-at` and `key-id`, every line ending in `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportManifest<'a> {
    /// The `<version>` of `<prefix>/<version>/config.json`.
    pub version: &'a str,
    /// The export's revision.
    pub revision: u64,
    /// sha256 of the stored body (rendered as lowercase hex).
    pub sha256: crate::digest::Sha256Digest,
    /// The `exported-at` metadata, as stored.
    pub exported_at: &'a str,
    /// The signing key's [`KeyId`].
    pub key_id: &'a str,
}

impl ExportManifest<'_> {
    /// The exact bytes signed; refused when a field could break the line structure.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SignatureError> {
        let fields: [(&'static str, &str); 3] = [
            ("version", self.version),
            ("exported-at", self.exported_at),
            ("key-id", self.key_id),
        ];
        if let Some((name, _)) = fields
            .iter()
            .find(|(_, value)| value.chars().any(char::is_control))
        {
            return Err(SignatureError::ManifestField(name));
        }
        Ok(format!(
            "{MANIFEST_FORMAT}\nversion: {}\nrevision: {}\nsha256: {}\nexported-at: {}\nkey-id: {}\n",
            self.version,
            self.revision,
            self.sha256.to_hex(),
            self.exported_at,
            self.key_id
        )
        .into_bytes())
    }
}

/// Whether `signature` was made over `manifest` by the configured key whose [`KeyId`] the
/// manifest names; returns that key. `Mismatch` when no configured key has that id, or when
/// it has and the signature is not its signature over these bytes.
pub fn verify_manifest<'k>(
    keys: &'k [PublicKey],
    manifest: &ExportManifest<'_>,
    signature: &Signature,
) -> Result<&'k PublicKey, SignatureError> {
    let bytes = manifest.to_bytes()?;
    let key = keys
        .iter()
        .find(|k| k.key_id() == manifest.key_id)
        .ok_or(SignatureError::Mismatch)?;
    verify(key, &bytes, signature)?;
    Ok(key)
}

/// A validated Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

/// Shows the key as base64 (it is public).
impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", encode_base64(&self.0))
    }
}

impl PublicKey {
    /// Raw key bytes, refused unless they are a point of large order.
    pub fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Result<Self, SignatureError> {
        ed25519_compact::PublicKey::new(bytes)
            .validate()
            .map_err(|_| SignatureError::InvalidPublicKey)?;
        Ok(PublicKey(bytes))
    }

    /// Base64 of the 32 raw bytes (or of the SPKI DER), or a PEM `PUBLIC KEY` block.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let text = text.trim();
        let der = if let Some(rest) = text.strip_prefix(PEM_BEGIN) {
            let body = rest
                .trim_end()
                .strip_suffix(PEM_END)
                .ok_or(SignatureError::BadPem)?;
            let joined: String = body.split_ascii_whitespace().collect();
            decode_base64(&joined).ok_or(SignatureError::NotBase64("the PEM block"))?
        } else {
            decode_base64(text).ok_or(SignatureError::NotBase64("the public key"))?
        };
        let raw = match der.len() {
            PUBLIC_KEY_LEN => &der[..],
            44 => der
                .strip_prefix(&SPKI_PREFIX[..])
                .ok_or(SignatureError::NotEd25519Spki)?,
            _ if der.first() == Some(&0x30) => return Err(SignatureError::NotEd25519Spki),
            n => return Err(SignatureError::PublicKeyLength(n)),
        };
        let mut bytes = [0; PUBLIC_KEY_LEN];
        bytes.copy_from_slice(raw);
        PublicKey::from_bytes(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Standard base64 of the 32 raw bytes: the form [`PublicKey::parse`] reads back.
    pub fn to_base64(&self) -> String {
        encode_base64(&self.0)
    }

    /// The key's id, carried by every export it signs as the `key-id` metadata: the first
    /// [`KEY_ID_LEN`] lowercase hex digits of the sha256 of the 32 raw key bytes (what
    /// `openssl pkey -pubin -outform DER | tail -c 32 | sha256sum | cut -c1-16` prints).
    pub fn key_id(&self) -> String {
        let mut hex = crate::digest::Sha256Digest::of(&self.0).to_hex();
        hex.truncate(KEY_ID_LEN);
        hex
    }
}

/// An Ed25519 signature, as stored beside an export.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", encode_base64(&self.0))
    }
}

impl Signature {
    /// The 64 bytes.
    pub fn from_bytes(bytes: [u8; SIGNATURE_LEN]) -> Self {
        Signature(bytes)
    }

    /// Standard base64 of the 64 bytes (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let bytes = decode_base64(text.trim()).ok_or(SignatureError::NotBase64("the signature"))?;
        let bytes: [u8; SIGNATURE_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SignatureError::SignatureLength(bytes.len()))?;
        Ok(Signature(bytes))
    }

    /// The 64 bytes.
    pub fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.0
    }

    /// Standard base64: the form stored in the `signature` metadata.
    pub fn to_base64(&self) -> String {
        encode_base64(&self.0)
    }
}

/// Whether `signature` was made over exactly `body` by the private half of `public_key`.
pub fn verify(
    public_key: &PublicKey,
    body: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    let key = ed25519_compact::PublicKey::new(public_key.0);
    let signature = ed25519_compact::Signature::new(signature.0);
    key.verify(body, &signature)
        .map_err(|_| SignatureError::Mismatch)
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn encode_base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    // RFC 8032 §7.1, TEST 2.
    const RFC_PUBLIC: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    const RFC_MESSAGE: &str = "72";
    const RFC_SIGNATURE: &str = "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
                                 085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00";

    fn rfc_key() -> PublicKey {
        PublicKey::from_bytes(hex(RFC_PUBLIC).try_into().unwrap()).unwrap()
    }

    fn rfc_signature() -> Signature {
        Signature::from_bytes(hex(RFC_SIGNATURE).try_into().unwrap())
    }

    /// A key pair from a seed, signing as the companion does (deterministic Ed25519).
    fn sign(seed: u8, body: &[u8]) -> (PublicKey, Signature) {
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
        let signature = pair.sk.sign(body, None);
        (
            PublicKey::from_bytes(*pair.pk).unwrap(),
            Signature::from_bytes(*signature),
        )
    }

    fn manifest<'a>(key_id: &'a str, revision: u64) -> ExportManifest<'a> {
        ExportManifest {
            version: "3.4.1.0",
            revision,
            sha256: crate::digest::Sha256Digest::of(b"body"),
            exported_at: "2026-11-30T10:00:00.000Z",
            key_id,
        }
    }

    #[test]
    fn the_manifest_has_a_fixed_layout() {
        assert_eq!(
            String::from_utf8(manifest("0123456789abcdef", 7).to_bytes().unwrap()).unwrap(),
            "fallback-export-manifest/1\nversion: 3.4.1.0\nrevision: 7\nsha256: \
             230d8358dc8e8890b4c58deeb62912ee2f20357ae92a5cc861b98e68fe31acb5\n\
             exported-at: 2026-11-30T10:00:00.000Z\nkey-id: 0123456789abcdef\n"
        );
        let mut forged = manifest("k", 1);
        forged.exported_at = "x\nrevision: 9";
        assert_eq!(
            forged.to_bytes(),
            Err(SignatureError::ManifestField("exported-at"))
        );
    }

    #[test]
    fn key_id_is_the_start_of_the_raw_keys_sha256() {
        // sha256 of RFC 8032 TEST 2's public key, first 16 hex digits.
        let id = rfc_key().key_id();
        assert_eq!(id.len(), KEY_ID_LEN);
        assert_eq!(
            id,
            crate::digest::Sha256Digest::of(&hex(RFC_PUBLIC)).to_hex()[..16]
        );
        assert_ne!(sign(1, b"").0.key_id(), sign(2, b"").0.key_id());
    }

    #[test]
    fn a_manifest_verifies_under_the_key_it_names_and_nothing_else() {
        let (a, _) = sign(1, b"");
        let (b, _) = sign(2, b"");
        let (c, _) = sign(3, b"");
        let id_a = a.key_id();
        let signed = manifest(&id_a, 7);
        let (_, signature) = sign(1, &signed.to_bytes().unwrap());
        let keys = [b, a];
        assert_eq!(verify_manifest(&keys, &signed, &signature), Ok(&a));
        // A replay under another revision, or any other field changed, is refused.
        for changed in [
            manifest(&id_a, 8),
            ExportManifest {
                version: "3.5.0.0",
                ..signed.clone()
            },
            ExportManifest {
                sha256: crate::digest::Sha256Digest::of(b"other body"),
                ..signed.clone()
            },
            ExportManifest {
                exported_at: "2026-12-30T10:00:00.000Z",
                ..signed.clone()
            },
        ] {
            assert_eq!(
                verify_manifest(&keys, &changed, &signature),
                Err(SignatureError::Mismatch),
                "{changed:?}"
            );
        }
        // Without the signer's key among those configured, nothing verifies.
        assert_eq!(
            verify_manifest(&[b, c], &signed, &signature),
            Err(SignatureError::Mismatch)
        );
        // A manifest naming another key id than the signer's is refused too.
        let id_b = b.key_id();
        let lying = manifest(&id_b, 7);
        let (_, lying_sig) = sign(1, &lying.to_bytes().unwrap());
        assert_eq!(
            verify_manifest(&keys, &lying, &lying_sig),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn rfc_8032_test_2_verifies() {
        assert_eq!(
            verify(&rfc_key(), &hex(RFC_MESSAGE), &rfc_signature()),
            Ok(())
        );
    }

    #[test]
    fn rfc_8032_test_1_signs_and_verifies() {
        // TEST 1: the empty message.
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let pair =
            ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::from_slice(&seed).unwrap());
        assert_eq!(
            pair.pk.to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let signature = pair.sk.sign(b"", None);
        assert_eq!(
            signature.to_vec(),
            hex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
        );
        let key = PublicKey::from_bytes(*pair.pk).unwrap();
        assert_eq!(
            verify(&key, b"", &Signature::from_bytes(*signature)),
            Ok(())
        );
    }

    #[test]
    fn another_key_or_a_tampered_body_or_signature_is_a_mismatch() {
        let body = br#"{"_format_version":"3.0"}"#;
        let (key, signature) = sign(1, body);
        assert_eq!(verify(&key, body, &signature), Ok(()));
        let (other, _) = sign(2, body);
        assert_eq!(
            verify(&other, body, &signature),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&key, br#"{"_format_version":"3.1"}"#, &signature),
            Err(SignatureError::Mismatch)
        );
        let mut flipped = *signature.as_bytes();
        flipped[10] ^= 1;
        assert_eq!(
            verify(&key, body, &Signature::from_bytes(flipped)),
            Err(SignatureError::Mismatch)
        );
        // A non-canonical S (S + L) is refused, not accepted as malleable.
        assert!(verify(
            &rfc_key(),
            &hex(RFC_MESSAGE),
            &Signature::from_bytes([0xff; 64])
        )
        .is_err());
    }

    #[test]
    fn public_keys_parse_from_base64_der_and_pem() {
        let key = rfc_key();
        assert_eq!(PublicKey::parse(&key.to_base64()), Ok(key));
        assert_eq!(
            PublicKey::parse(&format!("  {}\n", key.to_base64())),
            Ok(key)
        );
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(key.as_bytes());
        assert_eq!(PublicKey::parse(&encode_base64(&der)), Ok(key));
        let pem = format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", encode_base64(&der));
        assert_eq!(PublicKey::parse(&pem), Ok(key));
        // What `openssl pkey -pubout` prints for RFC 8032 TEST 1's key.
        let openssl = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            PublicKey::parse(openssl).unwrap().as_bytes().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        assert_eq!(
            format!("{key:?}"),
            format!("PublicKey({})", key.to_base64())
        );
    }

    #[test]
    fn bad_keys_and_signatures_say_why() {
        assert_eq!(
            PublicKey::parse("not base64!"),
            Err(SignatureError::NotBase64("the public key"))
        );
        assert_eq!(
            PublicKey::parse(&encode_base64(&[1; 31])),
            Err(SignatureError::PublicKeyLength(31))
        );
        let mut rsa_like = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
        ];
        rsa_like.extend_from_slice(&[9; 32]);
        assert_eq!(
            PublicKey::parse(&encode_base64(&rsa_like)),
            Err(SignatureError::NotEd25519Spki)
        );
        assert_eq!(
            PublicKey::parse("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"),
            Err(SignatureError::BadPem)
        );
        // The identity point has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            PublicKey::parse(&encode_base64(&identity)),
            Err(SignatureError::InvalidPublicKey)
        );
        assert_eq!(
            Signature::parse(&encode_base64(&[0; 63])),
            Err(SignatureError::SignatureLength(63))
        );
        assert_eq!(
            Signature::parse("@@@"),
            Err(SignatureError::NotBase64("the signature"))
        );
        assert!(!SignatureError::Mismatch.to_string().is_empty());
    }

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        for n in 0..70u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            let text = encode_base64(&bytes);
            assert_eq!(decode_base64(&text), Some(bytes.clone()), "{text}");
            assert_eq!(decode_base64(text.trim_end_matches('=')), Some(bytes));
        }
        assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode_base64(b"fo"), "Zm8=");
        for bad in ["Z", "Zm9=v", "Zm9v YmFy", "Zm-v", "Zm9v=", "Zm9=", "===="] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 7u64;
        for n in 0..2_000usize {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = n % 120;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (state >> ((i % 8) * 8)) as u8 ^ i as u8)
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            let _ = PublicKey::parse(&text);
            let _ = Signature::parse(&text);
            let _ = decode_base64(&text);
            let _ = PublicKey::parse(&format!("{PEM_BEGIN}{text}"));
            let encoded = encode_base64(&bytes);
            if let Ok(key) = PublicKey::parse(&encoded) {
                if let Ok(signature) =
                    Signature::parse(&encode_base64(&[bytes.clone(), bytes.clone()].concat()))
                {
                    let _ = verify(&key, &bytes, &signature);
                }
            }
            if len == 32 {
                let _ = PublicKey::from_bytes(bytes.clone().try_into().unwrap());
            }
            if len == 64 {
                let sig = Signature::from_bytes(bytes.clone().try_into().unwrap());
                assert!(verify(&rfc_key(), &bytes, &sig).is_err());
            }
        }
    }
}
