//! Key files: one line of lowercase hex (64 characters: the 32-byte ed25519 public key or secret
//! seed), so they can be read, diffed and pasted over a serial console.
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::BundleError;

/// The key's short name in manifests and messages: the first 8 bytes of BLAKE3(public key), hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex(&blake3::hash(key.as_bytes()).as_bytes()[..8])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Result<[u8; 32], BundleError> {
    let t = text.trim();
    if t.len() != 64 || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(BundleError::BadKey(
            "expected one line of 64 hexadecimal characters".into(),
        ));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16)
            .map_err(|e| BundleError::BadKey(e.to_string()))?;
    }
    Ok(out)
}

/// Parses a public key file. Weak keys (small-order points) are refused, as `verify_strict`
/// would refuse every signature under them anyway.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, BundleError> {
    let key = VerifyingKey::from_bytes(&unhex32(text)?)
        .map_err(|e| BundleError::BadKey(format!("not an ed25519 public key: {e}")))?;
    if key.is_weak() {
        return Err(BundleError::BadKey("weak (small-order) public key".into()));
    }
    Ok(key)
}

pub fn parse_secret_key(text: &str) -> Result<SigningKey, BundleError> {
    Ok(SigningKey::from_bytes(&unhex32(text)?))
}

pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{}\n", hex(key.as_bytes()))
}

pub fn secret_key_text(key: &SigningKey) -> String {
    format!("{}\n", hex(&key.to_bytes()))
}
