//! Helpers for the bundle and install tests: keys, hand-built bundles, model variants, and a
//! hash of a whole directory tree (to prove a refusal changed nothing).
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use ldm_edge::bundle::{self, Manifest, RuntimeVersion};
use ldm_edge::format::{ModelFile, ModelWriter};

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn now() -> u64 {
    ldm_edge::install::root::now()
}

/// A manifest that describes `model` and is valid for a day.
pub fn manifest(model: &[u8], _key: &SigningKey, version: u64) -> Manifest {
    Manifest {
        name: "test-model".into(),
        version,
        model_len: model.len() as u64,
        model_blake3: *blake3::hash(model).as_bytes(),
        min_runtime: RuntimeVersion(0, 1, 0),
        boards: vec![],
        memory_bytes: None,
        created: now() - 60,
        expires: now() + 86_400,
    }
}

/// Builds bundle bytes by hand, so tests can make what `write_bundle` refuses to.
/// `key` signs; the preamble names `named` (normally the same key).
pub fn raw_named(
    manifest: &[u8],
    key: Option<&SigningKey>,
    named: &SigningKey,
    model: &[u8],
) -> Vec<u8> {
    let mut pre = [0u8; 32];
    pre[..8].copy_from_slice(&bundle::MAGIC);
    pre[8..12].copy_from_slice(&bundle::VERSION.to_le_bytes());
    pre[12..16].copy_from_slice(&bundle::BYTE_ORDER_MARK.to_le_bytes());
    pre[16..20].copy_from_slice(&(manifest.len() as u32).to_le_bytes());
    pre[24..32].copy_from_slice(&bundle::key_id_bytes(named));
    let sig = match key {
        Some(k) => k.sign(&bundle::signed_message(&pre, manifest)).to_bytes(),
        None => [0u8; 64],
    };
    let mut out = pre.to_vec();
    out.extend_from_slice(&sig);
    out.extend_from_slice(manifest);
    out.extend_from_slice(model);
    out
}

pub fn raw(manifest: &[u8], key: Option<&SigningKey>, model: &[u8]) -> Vec<u8> {
    raw_named(
        manifest,
        key,
        key.unwrap_or(&SigningKey::from_bytes(&[1; 32])),
        model,
    )
}

/// A signed bundle of `model` bytes.
pub fn signed(m: &Manifest, key: &SigningKey, model: &[u8]) -> Vec<u8> {
    raw(&m.to_bytes(), Some(key), model)
}

/// Rewrites a model file tensor by tensor; `edit` may change a tensor's raw bytes.
pub fn rewrite_model(
    src: &Path,
    dst: &Path,
    tag: u64,
    mut edit: impl FnMut(&str, ldm_edge::format::DType, &mut Vec<u8>),
) {
    let f = ModelFile::open(src).unwrap();
    let mut meta = f.meta().clone();
    // A different header gives a different file, so each variant has its own digest.
    meta["provenance"]["bundle_test_variant"] = serde_json::json!(tag);
    let mut w = ModelWriter::new(meta).unwrap();
    for t in f.tensors() {
        let v = f.tensor(&t.name).unwrap();
        let mut bytes = v.bytes.to_vec();
        edit(&t.name, t.dtype, &mut bytes);
        w.add_raw(&t.name, v.shape(), t.dtype, bytes).unwrap();
    }
    w.write(dst).unwrap();
}

pub fn shapes_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes-32.ldm")
}

/// BLAKE3 over every entry under `dir`: relative path, kind, permission bits and contents (or
/// link target), in sorted order. Equal hashes mean byte-identical trees.
pub fn tree_hash(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    fn walk(base: &Path, dir: &Path, h: &mut blake3::Hasher) {
        let mut ents: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            h.update(rel.as_bytes());
            h.update(&[0]);
            h.update(&md.permissions().mode().to_le_bytes());
            if md.file_type().is_symlink() {
                h.update(b"L");
                h.update(std::fs::read_link(&p).unwrap().to_string_lossy().as_bytes());
            } else if md.is_dir() {
                h.update(b"D");
                walk(base, &p, h);
            } else {
                h.update(b"F");
                h.update(&std::fs::read(&p).unwrap());
            }
            h.update(&[0]);
        }
    }
    let mut h = blake3::Hasher::new();
    walk(dir, dir, &mut h);
    h.finalize().to_hex().to_string()
}
