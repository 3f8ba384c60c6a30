//! Signed model bundles (`.ldmb`): a manifest signed with ed25519, then the model file.
//! The byte-level specification is `src/bundle/SPEC.md`.
//!
//! * [`BundleHeader::read`] reads the preamble and the manifest's bytes from a stream, so a
//!   device can refuse a bundle before it writes a single model byte.
//! * [`BundleHeader::verify`] checks the signature against trusted keys (`verify_strict`),
//!   and only then parses the manifest.
//! * [`Verified::copy_model`] streams the model out while hashing it.
//! * [`write_bundle`] writes one (host side; signing needs a [`ed25519_dalek::SigningKey`]).
pub mod keys;
pub mod manifest;
pub mod reader;
pub mod writer;

pub use keys::{key_id, parse_public_key, parse_secret_key, public_key_text, secret_key_text};
pub use manifest::{Manifest, RuntimeVersion};
pub use reader::signed_message;
pub use reader::{BundleHeader, Verified};
pub use writer::{key_id_bytes, write_bundle};

/// First 8 bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"LDMBNDL\0";
/// The bundle format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Byte-order mark, a little-endian u32 (same as the model file's).
pub const BYTE_ORDER_MARK: u32 = 0x0102_0304;
/// Preamble: magic, version, byte-order mark, manifest length, reserved, key id, signature.
pub const PREAMBLE_LEN: usize = 8 + 4 + 4 + 4 + 4 + 8 + 64;
/// Largest manifest accepted, checked before anything is allocated.
pub const MAX_MANIFEST_LEN: u32 = 64 << 10;
/// Largest model a bundle may carry (1 TiB): far above any edge model, far below u64 overflow.
pub const MAX_MODEL_LEN: u64 = 1 << 40;
/// The signature covers this prefix, then preamble bytes 0..32, then the manifest bytes, so a
/// signature made for another purpose with the same key can never pass as a bundle signature.
pub const SIGNING_CONTEXT: &[u8] = b"ldm-bundle-v1\0";

/// Everything that can be wrong with a bundle, one variant per validation rule.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("bundle is {len} bytes, shorter than the {PREAMBLE_LEN}-byte preamble")]
    TruncatedPreamble { len: u64 },
    #[error("bad magic {found:02x?}: not an .ldmb bundle")]
    BadMagic { found: [u8; 8] },
    #[error("unsupported bundle version {found} (this runtime reads version {VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("bad byte order mark {found:#010x}")]
    ByteOrder { found: u32 },
    #[error("manifest of {len} bytes exceeds the cap of {MAX_MANIFEST_LEN} bytes")]
    ManifestTooLarge { len: u32 },
    #[error("reserved preamble field is {found:#x}, must be 0")]
    Reserved { found: u32 },
    #[error("bundle ends inside the manifest ({len} bytes announced)")]
    TruncatedManifest { len: u32 },
    #[error("manifest is not valid UTF-8")]
    ManifestUtf8,
    #[error("manifest does not parse: {0}")]
    ManifestJson(String),
    #[error("manifest has the key `{0}` twice")]
    DuplicateKey(String),
    #[error("manifest is not a JSON object")]
    ManifestNotObject,
    #[error("manifest has no `{0}` field")]
    MissingField(&'static str),
    #[error("manifest field `{field}` {problem}")]
    BadField {
        field: &'static str,
        problem: String,
    },
    #[error("manifest has an unknown field `{0}`")]
    UnknownField(String),
    #[error("model of {len} bytes exceeds the cap of {MAX_MODEL_LEN} bytes")]
    ModelTooLarge { len: u64 },
    #[error("bundle is unsigned (all-zero signature)")]
    Unsigned,
    #[error("bundle is signed by key {key_id}, which is not among the {trusted} trusted key(s)")]
    UnknownKey { key_id: String, trusted: usize },
    #[error("signature does not verify with trusted key {key_id}")]
    BadSignature { key_id: String },
    #[error("bundle ends {missing} bytes before the end of the model")]
    TruncatedModel { missing: u64 },
    #[error("bundle has bytes after the model")]
    TrailingBytes,
    #[error("model digest mismatch: manifest says {expected}, the bytes hash to {computed}")]
    DigestMismatch { expected: String, computed: String },
    #[error("bad key file: {0}")]
    BadKey(String),
}

/// BLAKE3 of a whole file, streamed (the store names models by it).
pub fn hash_file(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut h)?;
    Ok(*h.finalize().as_bytes())
}
