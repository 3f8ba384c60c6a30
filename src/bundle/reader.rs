//! Reading a bundle from a stream: preamble and manifest first (bounded, validated, signature
//! checked), then the model bytes, hashed while they are copied out.
use std::io::{Read, Write};

use ed25519_dalek::{Signature, VerifyingKey};

use super::keys::{hex, key_id};
use super::{
    BundleError, Manifest, BYTE_ORDER_MARK, MAGIC, MAX_MANIFEST_LEN, PREAMBLE_LEN, SIGNING_CONTEXT,
    VERSION,
};

/// A bundle's validated preamble and its manifest bytes, not yet trusted. The model bytes
/// follow in the stream.
#[derive(Debug, Clone)]
pub struct BundleHeader {
    key_id: [u8; 8],
    manifest_bytes: Vec<u8>,
    signature: [u8; 64],
    /// Preamble bytes 0..32, which the signature covers with the manifest.
    signed_preamble: [u8; 32],
}

/// A bundle whose signature verified and whose manifest parsed: only now is anything in the
/// manifest believed.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    pub key_id: String,
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

impl BundleHeader {
    /// Reads the preamble and the manifest's bytes, checking the preamble's rules. The manifest
    /// is neither parsed nor trusted until [`BundleHeader::verify`].
    pub fn read(r: &mut impl Read) -> Result<Self, BundleError> {
        let mut pre = [0u8; PREAMBLE_LEN];
        let n = read_full(r, &mut pre)?;
        if n < PREAMBLE_LEN {
            return Err(BundleError::TruncatedPreamble { len: n as u64 });
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&pre[..8]);
        if magic != MAGIC {
            return Err(BundleError::BadMagic { found: magic });
        }
        let version = u32_at(&pre, 8);
        if version != VERSION {
            return Err(BundleError::UnsupportedVersion { found: version });
        }
        let bom = u32_at(&pre, 12);
        if bom != BYTE_ORDER_MARK {
            return Err(BundleError::ByteOrder { found: bom });
        }
        let len = u32_at(&pre, 16);
        // Before any allocation sized by the file.
        if len > MAX_MANIFEST_LEN {
            return Err(BundleError::ManifestTooLarge { len });
        }
        let reserved = u32_at(&pre, 20);
        if reserved != 0 {
            return Err(BundleError::Reserved { found: reserved });
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&pre[24..32]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&pre[32..96]);
        let mut signed_preamble = [0u8; 32];
        signed_preamble.copy_from_slice(&pre[..32]);
        let mut manifest_bytes = vec![0u8; len as usize];
        if read_full(r, &mut manifest_bytes)? < manifest_bytes.len() {
            return Err(BundleError::TruncatedManifest { len });
        }
        Ok(BundleHeader {
            key_id,
            manifest_bytes,
            signature,
            signed_preamble,
        })
    }

    /// The signing key's id as the preamble states it.
    pub fn key_id(&self) -> String {
        hex(&self.key_id)
    }

    /// Checks the signature with the trusted key the preamble names, by `verify_strict`
    /// (no malleable or small-order signatures), then parses the manifest. Nothing in the
    /// manifest is looked at before the signature holds.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<Verified, BundleError> {
        if self.signature.iter().all(|&b| b == 0) {
            return Err(BundleError::Unsigned);
        }
        let id = self.key_id();
        let key =
            trusted
                .iter()
                .find(|k| key_id(k) == id)
                .ok_or_else(|| BundleError::UnknownKey {
                    key_id: id.clone(),
                    trusted: trusted.len(),
                })?;
        let sig = Signature::from_bytes(&self.signature);
        key.verify_strict(&self.signed_message(), &sig)
            .map_err(|_| BundleError::BadSignature { key_id: id.clone() })?;
        Ok(Verified {
            manifest: Manifest::parse(&self.manifest_bytes)?,
            key_id: id,
        })
    }

    /// The manifest without checking the signature, for host tools that show or route a
    /// bundle. Devices use [`BundleHeader::verify`].
    pub fn manifest_unverified(&self) -> Result<Manifest, BundleError> {
        Manifest::parse(&self.manifest_bytes)
    }

    fn signed_message(&self) -> Vec<u8> {
        signed_message(&self.signed_preamble, &self.manifest_bytes)
    }

    /// Bytes before the model: preamble + manifest.
    pub fn header_len(&self) -> u64 {
        (PREAMBLE_LEN + self.manifest_bytes.len()) as u64
    }
}

/// What the signature covers: the context string, preamble bytes 0..32 (magic through key id)
/// and the manifest.
pub fn signed_message(preamble: &[u8; 32], manifest: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + 32 + manifest.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(preamble);
    msg.extend_from_slice(manifest);
    msg
}

impl Verified {
    /// Copies exactly `model_len` bytes to `out` while hashing them, checks that the stream ends
    /// there and that the digest matches. `on_chunk` sees each chunk's length after it is
    /// written (progress, fault injection).
    pub fn copy_model(
        &self,
        r: &mut impl Read,
        out: &mut impl Write,
        mut on_chunk: impl FnMut(u64),
    ) -> Result<(), BundleError> {
        let mut hasher = blake3::Hasher::new();
        let mut left = self.manifest.model_len;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(buf.len()));
            let n = read_full(r, &mut buf[..want])?;
            if n == 0 {
                return Err(BundleError::TruncatedModel { missing: left });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            left -= n as u64;
            on_chunk(n as u64);
        }
        if read_full(r, &mut [0u8; 1])? != 0 {
            return Err(BundleError::TrailingBytes);
        }
        let computed = hasher.finalize();
        if computed.as_bytes() != &self.manifest.model_blake3 {
            return Err(BundleError::DigestMismatch {
                expected: self.manifest.model_hex(),
                computed: hex(computed.as_bytes()),
            });
        }
        Ok(())
    }
}
