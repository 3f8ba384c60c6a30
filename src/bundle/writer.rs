//! Writing a bundle (host side): the manifest signed with the fleet key, then the model, to a
//! temporary file renamed over the target.
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};

use super::{
    BundleError, Manifest, BYTE_ORDER_MARK, MAGIC, MAX_MANIFEST_LEN, SIGNING_CONTEXT, VERSION,
};

/// Writes `manifest` signed by `key` followed by the model file's bytes. The manifest's
/// `model_len`, `model_blake3` and `key_id` must already describe `model` and `key`; they are
/// checked here so a bundle that would be refused everywhere is never written.
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
    if manifest.key_id != super::key_id(&key.verifying_key()) {
        return Err(BundleError::BadField {
            field: "key_id",
            problem: "does not name the signing key".into(),
        });
    }
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(&bytes);
    let sig = key.sign(&msg).to_bytes();

    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("bundle"),
        std::process::id()
    ));
    let result = (|| -> Result<u64, BundleError> {
        let mut w = BufWriter::new(File::create(&tmp)?);
        w.write_all(&MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&BYTE_ORDER_MARK.to_le_bytes())?;
        w.write_all(&mlen.to_le_bytes())?;
        w.write_all(&0u32.to_le_bytes())?;
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
