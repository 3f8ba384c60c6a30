//! Writing a bundle (host side): the manifest signed with the fleet key, then the model, to a
//! temporary file renamed over the target.
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};

use super::{BundleError, Manifest, BYTE_ORDER_MARK, MAGIC, MAX_MANIFEST_LEN, VERSION};

/// The first 8 bytes of BLAKE3(public key): the key id in the preamble.
pub fn key_id_bytes(key: &SigningKey) -> [u8; 8] {
    let mut id = [0u8; 8];
    id.copy_from_slice(&blake3::hash(key.verifying_key().as_bytes()).as_bytes()[..8]);
    id
}

/// Writes `manifest` signed by `key` followed by the model file's bytes. The manifest's
/// `model_len` and `model_blake3` must already describe `model`; they are checked while the
/// model is copied, so a bundle that would be refused everywhere is never written.
pub fn write_bundle(
    manifest: &Manifest,
    key: &SigningKey,
    model: &Path,
    out: &Path,
) -> Result<u64, BundleError> {
    let bytes = manifest.to_bytes();
    let mlen = u32::try_from(bytes.len())
        .ok()
        .filter(|&l| l <= MAX_MANIFEST_LEN)
        .ok_or(BundleError::ManifestTooLarge {
            len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        })?;
    // Round-trip through the reader's rules.
    Manifest::parse(&bytes)?;
    let mut pre = [0u8; 32];
    pre[..8].copy_from_slice(&MAGIC);
    pre[8..12].copy_from_slice(&VERSION.to_le_bytes());
    pre[12..16].copy_from_slice(&BYTE_ORDER_MARK.to_le_bytes());
    pre[16..20].copy_from_slice(&mlen.to_le_bytes());
    // 20..24 reserved, zero.
    pre[24..32].copy_from_slice(&key_id_bytes(key));
    let sig = key
        .sign(&super::reader::signed_message(&pre, &bytes))
        .to_bytes();

    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("bundle"),
        std::process::id()
    ));
    let result = (|| -> Result<u64, BundleError> {
        let mut w = BufWriter::new(File::create(&tmp)?);
        w.write_all(&pre)?;
        w.write_all(&sig)?;
        w.write_all(&bytes)?;
        let mut src = File::open(model)?;
        let mut hasher = blake3::Hasher::new();
        let copied = std::io::copy(&mut src, &mut HashingWriter(&mut w, &mut hasher))?;
        if copied != manifest.model_len || hasher.finalize().as_bytes() != &manifest.model_blake3 {
            return Err(BundleError::DigestMismatch {
                expected: manifest.model_hex(),
                computed: format!("{copied} bytes that hash differently (model changed?)"),
            });
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, out)?;
        Ok(super::PREAMBLE_LEN as u64 + u64::from(mlen) + copied)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

struct HashingWriter<'a, W: Write>(&'a mut W, &'a mut blake3::Hasher);

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
