//! The signed manifest: what the model is (digest, length), which version it is, and where and
//! until when it may be installed. Parsed strictly: exactly the known fields, each checked.
use serde_json::{Map, Value};

use super::{BundleError, MAX_MODEL_LEN};

/// Longest bundle name, board list and board name accepted.
pub const MAX_NAME_LEN: usize = 256;
pub const MAX_BOARDS: usize = 256;
pub const MAX_BOARD_LEN: usize = 64;

/// A runtime version `MAJOR.MINOR.PATCH`, compared numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuntimeVersion(pub u32, pub u32, pub u32);

impl RuntimeVersion {
    /// The version of this runtime (the crate version).
    pub fn current() -> Self {
        Self::parse(env!("CARGO_PKG_VERSION")).unwrap_or(RuntimeVersion(0, 0, 0))
    }

    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('.').map(|p| {
            // No signs, no leading '+', no empty parts: `u32::from_str` alone accepts "+1".
            if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
                None
            } else {
                p.parse::<u32>().ok()
            }
        });
        let v = RuntimeVersion(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }
}

impl std::fmt::Display for RuntimeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The manifest's fields (SPEC.md lists the rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: u64,
    pub model_len: u64,
    pub model_blake3: [u8; 32],
    pub min_runtime: RuntimeVersion,
    /// Boards the model may be installed on; empty means any board.
    pub boards: Vec<String>,
    /// Peak memory of one generation at the model's native size as the planner predicts it.
    pub memory_bytes: Option<u64>,
    /// Unix seconds.
    pub created: u64,
    pub expires: u64,
}

const FIELDS: [&str; 9] = [
    "name",
    "version",
    "model_len",
    "model_blake3",
    "min_runtime",
    "boards",
    "memory_bytes",
    "created",
    "expires",
];

fn bad(field: &'static str, problem: impl Into<String>) -> BundleError {
    BundleError::BadField {
        field,
        problem: problem.into(),
    }
}

fn get<'a>(m: &'a Map<String, Value>, field: &'static str) -> Result<&'a Value, BundleError> {
    m.get(field).ok_or(BundleError::MissingField(field))
}

fn uint(m: &Map<String, Value>, field: &'static str) -> Result<u64, BundleError> {
    get(m, field)?
        .as_u64()
        .ok_or_else(|| bad(field, "is not an unsigned 64-bit integer"))
}

fn string<'a>(m: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, BundleError> {
    get(m, field)?
        .as_str()
        .ok_or_else(|| bad(field, "is not a string"))
}

fn hex_lower(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Board names: `[A-Za-z0-9._-]`, 1..=64 bytes (they are compared byte for byte and appear in
/// file names and reports).
pub fn valid_board(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= MAX_BOARD_LEN
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

impl Manifest {
    /// Parses and checks manifest bytes (the preamble has already bounded their length).
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        let text = std::str::from_utf8(bytes).map_err(|_| BundleError::ManifestUtf8)?;
        let value = crate::format::strict_json::parse(text).map_err(|e| match e {
            crate::format::FormatError::DuplicateKey { key } => BundleError::DuplicateKey(key),
            other => BundleError::ManifestJson(other.to_string()),
        })?;
        let Value::Object(m) = value else {
            return Err(BundleError::ManifestNotObject);
        };
        if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(BundleError::UnknownField(k.chars().take(80).collect()));
        }
        let name = string(&m, "name")?;
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(bad(
                "name",
                "must be 1..=256 bytes without control characters",
            ));
        }
        let version = uint(&m, "version")?;
        if version == 0 {
            return Err(bad("version", "must be at least 1"));
        }
        let model_len = uint(&m, "model_len")?;
        if model_len > MAX_MODEL_LEN {
            return Err(BundleError::ModelTooLarge { len: model_len });
        }
        if model_len < crate::format::PREAMBLE_LEN as u64 {
            return Err(bad("model_len", "is shorter than a model file's preamble"));
        }
        let digest = string(&m, "model_blake3")?;
        if !hex_lower(digest, 64) {
            return Err(bad("model_blake3", "must be 64 lowercase hex characters"));
        }
        let mut model_blake3 = [0u8; 32];
        for (i, o) in model_blake3.iter_mut().enumerate() {
            *o = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16)
                .map_err(|e| bad("model_blake3", e.to_string()))?;
        }
        let min_runtime = RuntimeVersion::parse(string(&m, "min_runtime")?)
            .ok_or_else(|| bad("min_runtime", "must be MAJOR.MINOR.PATCH"))?;
        let list = get(&m, "boards")?
            .as_array()
            .ok_or_else(|| bad("boards", "is not an array"))?;
        if list.len() > MAX_BOARDS {
            return Err(bad("boards", format!("has more than {MAX_BOARDS} entries")));
        }
        let mut boards = Vec::with_capacity(list.len());
        for b in list {
            match b.as_str() {
                Some(s) if valid_board(s) && !boards.iter().any(|x: &String| x == s) => {
                    boards.push(s.to_string())
                }
                _ => {
                    return Err(bad(
                        "boards",
                        "entries must be distinct names of 1..=64 [A-Za-z0-9._-]",
                    ))
                }
            }
        }
        let memory_bytes = match get(&m, "memory_bytes")? {
            Value::Null => None,
            v => Some(
                v.as_u64()
                    .ok_or_else(|| bad("memory_bytes", "is neither null nor an integer"))?,
            ),
        };
        let created = uint(&m, "created")?;
        let expires = uint(&m, "expires")?;
        if expires <= created {
            return Err(bad("expires", "is not after `created`"));
        }
        Ok(Manifest {
            name: name.to_string(),
            version,
            model_len,
            model_blake3,
            min_runtime,
            boards,
            memory_bytes,
            created,
            expires,
        })
    }

    /// The JSON bytes a writer signs (keys sorted; readers accept any order).
    pub fn to_bytes(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "name": self.name,
            "version": self.version,
            "model_len": self.model_len,
            "model_blake3": self.model_hex(),
            "min_runtime": self.min_runtime.to_string(),
            "boards": self.boards,
            "memory_bytes": self.memory_bytes,
            "created": self.created,
            "expires": self.expires,
        });
        // A Value of strings and integers always serializes.
        serde_json::to_vec_pretty(&v).unwrap_or_default()
    }

    pub fn model_hex(&self) -> String {
        super::keys::hex(&self.model_blake3)
    }
}
