//! Every validation rule of the `.ldm` reader, each with a crafted bad file, plus a mutation
//! robustness test. Files go to the process's scratch directory (tests/support/scratch.rs).
use std::path::PathBuf;

#[path = "support/scratch.rs"]
mod scratch;

use ldm_edge::format::*;
use serde_json::json;

fn tmp_path(name: &str) -> PathBuf {
    scratch::scratch("format-malformed").join(format!("{name}.ldm"))
}

/// Writes `bytes` to a fresh file and opens it.
fn open_bytes(name: &str, bytes: &[u8]) -> Result<ModelFile, FormatError> {
    let path = tmp_path(name);
    std::fs::write(&path, bytes).unwrap();
    ModelFile::open(&path)
}

fn digest_of(file: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&file[..24]);
    h.update(&file[56..]);
    *h.finalize().as_bytes()
}

/// Assembles a file by hand: preamble, `header` text, zero padding, then `data` (which starts at
/// the data section). The digest is correct for the result.
fn craft(header: &str, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"LDMEDGE\0");
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&0x0102_0304u32.to_le_bytes());
    f.extend_from_slice(&(header.len() as u64).to_le_bytes());
    f.extend_from_slice(&[0u8; 32]);
    f.extend_from_slice(header.as_bytes());
    f.resize(f.len().next_multiple_of(64), 0);
    f.extend_from_slice(data);
    let d = digest_of(&f);
    f[24..56].copy_from_slice(&d);
    f
}

/// A data section of `n` bytes: nonzero payload, but the caller decides where padding goes.
fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 + 1).collect()
}

/// Two tensors, `w` (f32 [4], 16 bytes at 0) and `b` (f16 [2], 4 bytes at 64); the file ends at
/// data offset 128. Returns the file.
fn valid() -> Vec<u8> {
    let header = r#"{"config":{"k":1},"tensors":[
        {"name":"w","dtype":"f32","shape":[4],"offset":0,"len":16},
        {"name":"b","dtype":"f16","shape":[2],"offset":64,"len":4}]}"#;
    let mut d = vec![0u8; 128];
    d[..16].copy_from_slice(&data(16));
    d[64..68].copy_from_slice(&data(4));
    craft(header, &d)
}

/// A file with one tensor entry given as JSON text and a data section of `data_len` bytes whose
/// first `payload` bytes are nonzero.
fn one(entry: &str, payload: usize, data_len: usize) -> Vec<u8> {
    let mut d = vec![0u8; data_len];
    d[..payload].copy_from_slice(&data(payload));
    craft(&format!(r#"{{"tensors":[{entry}]}}"#), &d)
}

fn data_offset(file: &[u8]) -> usize {
    let hl = u64::from_le_bytes(file[16..24].try_into().unwrap()) as usize;
    (56 + hl).next_multiple_of(64)
}

#[test]
fn valid_crafted_file_opens() {
    let f = valid();
    let m = open_bytes("valid", &f).unwrap();
    assert_eq!(m.tensors().len(), 2);
    assert_eq!(m.meta(), &json!({"config": {"k": 1}}));
    assert_eq!(m.tensor("b").unwrap().bytes, &data(4)[..]);
    m.verify_digest().unwrap();
    // Scalars (empty shape) are allowed.
    let s = one(
        r#"{"name":"s","dtype":"f32","shape":[],"offset":0,"len":4}"#,
        4,
        64,
    );
    assert_eq!(
        open_bytes("scalar", &s)
            .unwrap()
            .tensor("s")
            .unwrap()
            .numel(),
        1
    );
}

#[test]
fn truncated_preamble() {
    let f = valid();
    for (i, len) in [0usize, 1, 8, 30, 55].into_iter().enumerate() {
        let r = open_bytes(&format!("trunc_pre{i}"), &f[..len]);
        assert!(
            matches!(r, Err(FormatError::TruncatedPreamble { .. })),
            "{len}: {r:?}"
        );
    }
}

#[test]
fn truncated_data() {
    let f = valid();
    let end_of_b = data_offset(&f) + 64 + 4;
    // Cut inside tensor `b`.
    let r = open_bytes("trunc_data", &f[..end_of_b - 2]);
    assert!(
        matches!(&r, Err(FormatError::OutOfBounds { name, .. }) if name == "b"),
        "{r:?}"
    );
    // Cut only the trailing padding.
    let r = open_bytes("trunc_tail", &f[..end_of_b]);
    assert!(matches!(r, Err(FormatError::FileLength { .. })), "{r:?}");
    // Cut right after the header.
    let r = open_bytes("trunc_header", &f[..data_offset(&f)]);
    assert!(matches!(r, Err(FormatError::OutOfBounds { .. })), "{r:?}");
}

#[test]
fn bad_magic() {
    let mut f = valid();
    f[0] = b'G';
    assert!(matches!(
        open_bytes("magic", &f),
        Err(FormatError::BadMagic { .. })
    ));
    let mut f = valid();
    f[7] = b'1';
    assert!(matches!(
        open_bytes("magic2", &f),
        Err(FormatError::BadMagic { .. })
    ));
}

#[test]
fn bad_version() {
    for v in [0u32, 2, u32::MAX] {
        let mut f = valid();
        f[8..12].copy_from_slice(&v.to_le_bytes());
        let r = open_bytes("version", &f);
        assert!(
            matches!(r, Err(FormatError::UnsupportedVersion { found, supported: 1 }) if found == v)
        );
    }
}

#[test]
fn bad_byte_order_mark() {
    for bom in [0x0403_0201u32, 0, 0x0102_0305] {
        let mut f = valid();
        f[12..16].copy_from_slice(&bom.to_le_bytes());
        let r = open_bytes("bom", &f);
        assert!(
            matches!(r, Err(FormatError::ByteOrder { found }) if found == bom),
            "{r:?}"
        );
        assert!(r.unwrap_err().to_string().contains("byte order"));
    }
}

#[test]
fn header_over_cap() {
    for len in [MAX_HEADER_LEN + 1, u64::MAX] {
        let mut f = valid();
        f[16..24].copy_from_slice(&len.to_le_bytes());
        let r = open_bytes("cap", &f);
        assert!(
            matches!(r, Err(FormatError::HeaderTooLarge { .. })),
            "{r:?}"
        );
    }
}

#[test]
fn header_length_past_end_of_file() {
    let mut f = valid();
    let len = f.len() as u64; // 56 + len > file length
    f[16..24].copy_from_slice(&len.to_le_bytes());
    let r = open_bytes("header_past_eof", &f);
    assert!(
        matches!(r, Err(FormatError::HeaderOutOfBounds { .. })),
        "{r:?}"
    );
}

#[test]
fn invalid_utf8() {
    let f = craft("{\"tensors\":[],\"x\":\"\u{e9}\"}", &[]);
    let mut f = f;
    let at = f.iter().position(|&b| b == 0xc3).unwrap();
    f[at] = 0xff;
    assert!(matches!(
        open_bytes("utf8", &f),
        Err(FormatError::HeaderUtf8(_))
    ));
}

#[test]
fn bad_json() {
    for (i, text) in [
        "{\"tensors\":[}",
        "",
        "{\"tensors\":[]} x",
        "{\"tensors\":[],}",
        // Python's non-finite tokens are accepted in imported diffusers configs only; the
        // model file's own header stays strict JSON.
        "{\"tensors\":[],\"x\":-Infinity}",
        "{\"tensors\":[],\"x\":NaN}",
    ]
    .into_iter()
    .enumerate()
    {
        let r = open_bytes(&format!("json{i}"), &craft(text, &[]));
        assert!(
            matches!(r, Err(FormatError::HeaderJson(_))),
            "{text:?}: {r:?}"
        );
    }
    // Nesting deeper than serde_json's recursion limit is an error, not a stack overflow.
    let deep = format!(
        "{{\"tensors\":[],\"x\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let r = open_bytes("json_deep", &craft(&deep, &[]));
    assert!(matches!(r, Err(FormatError::HeaderJson(_))), "{r:?}");
}

#[test]
fn header_not_an_object() {
    let r = open_bytes("not_object", &craft("[1,2]", &[]));
    assert!(matches!(r, Err(FormatError::HeaderNotObject)), "{r:?}");
}

#[test]
fn duplicate_json_keys() {
    let r = open_bytes("dup_key", &craft(r#"{"tensors":[],"tensors":[]}"#, &[]));
    assert!(
        matches!(&r, Err(FormatError::DuplicateKey { key }) if key == "tensors"),
        "{r:?}"
    );
    let f = one(
        r#"{"name":"w","name":"v","dtype":"f32","shape":[1],"offset":0,"len":4}"#,
        4,
        64,
    );
    let r = open_bytes("dup_key_nested", &f);
    assert!(
        matches!(&r, Err(FormatError::DuplicateKey { key }) if key == "name"),
        "{r:?}"
    );
}

#[test]
fn tensors_missing_or_not_an_array() {
    let r = open_bytes("no_tensors", &craft(r#"{"config":{}}"#, &[]));
    assert!(matches!(r, Err(FormatError::MissingTensors)), "{r:?}");
    let r = open_bytes("tensors_obj", &craft(r#"{"tensors":{"w":1}}"#, &[]));
    assert!(matches!(r, Err(FormatError::TensorsNotArray)), "{r:?}");
    let r = open_bytes("entry_num", &craft(r#"{"tensors":[7]}"#, &[]));
    assert!(
        matches!(r, Err(FormatError::TensorEntryNotObject { index: 0 })),
        "{r:?}"
    );
}

#[test]
fn tensor_entry_fields() {
    let cases: [(&str, fn(&FormatError) -> bool); 6] = [
        (r#"{"dtype":"f32","shape":[1],"offset":0,"len":4}"#, |e| {
            matches!(e, FormatError::MissingField { field: "name", .. })
        }),
        (
            r#"{"name":"w","dtype":"f32","shape":[1],"offset":0}"#,
            |e| matches!(e, FormatError::MissingField { field: "len", .. }),
        ),
        (
            r#"{"name":"w","dtype":"f32","shape":[-1],"offset":0,"len":4}"#,
            |e| matches!(e, FormatError::BadField { field: "shape", .. }),
        ),
        (
            r#"{"name":"w","dtype":"f32","shape":[1.5],"offset":0,"len":4}"#,
            |e| matches!(e, FormatError::BadField { field: "shape", .. }),
        ),
        (
            r#"{"name":"w","dtype":"f32","shape":[1],"offset":"0","len":4}"#,
            |e| {
                matches!(
                    e,
                    FormatError::BadField {
                        field: "offset",
                        ..
                    }
                )
            },
        ),
        (
            r#"{"name":"w","dtype":"f32","shape":[1],"offset":0,"len":4,"crc":1}"#,
            |e| matches!(e, FormatError::UnknownField { field, .. } if field == "crc"),
        ),
    ];
    for (i, (entry, check)) in cases.into_iter().enumerate() {
        let r = open_bytes(&format!("field{i}"), &one(entry, 4, 64));
        let e = r.expect_err(entry);
        assert!(check(&e), "{entry}: {e:?}");
    }
}

#[test]
fn unknown_dtype() {
    let f = one(
        r#"{"name":"w","dtype":"bf16","shape":[2],"offset":0,"len":4}"#,
        4,
        64,
    );
    let r = open_bytes("dtype", &f);
    assert!(
        matches!(&r, Err(FormatError::UnknownDType { name, dtype }) if name == "w" && dtype == "bf16"),
        "{r:?}"
    );
    let f = one(
        r#"{"name":"w","dtype":7,"shape":[1],"offset":0,"len":4}"#,
        4,
        64,
    );
    let r = open_bytes("dtype_num", &f);
    assert!(
        matches!(r, Err(FormatError::BadField { field: "dtype", .. })),
        "{r:?}"
    );
}

#[test]
fn bad_names() {
    for (i, name) in [r#""""#, r#""a\u0000b""#, r#""a\nb""#, r#"" w""#, "5"]
        .into_iter()
        .enumerate()
    {
        let entry = format!(r#"{{"name":{name},"dtype":"f32","shape":[1],"offset":0,"len":4}}"#);
        let r = open_bytes(&format!("name{i}"), &one(&entry, 4, 64));
        let ok = match &r {
            Err(FormatError::BadName { .. }) => true,
            Err(FormatError::BadField { field: "name", .. }) => name == "5",
            _ => false,
        };
        assert!(ok, "{name}: {r:?}");
    }
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let entry = format!(r#"{{"name":"{long}","dtype":"f32","shape":[1],"offset":0,"len":4}}"#);
    let r = open_bytes("name_long", &one(&entry, 4, 64));
    assert!(matches!(r, Err(FormatError::BadName { .. })), "{r:?}");
}

#[test]
fn zero_sized_dimension_and_rank() {
    let f = one(
        r#"{"name":"w","dtype":"f32","shape":[3,0],"offset":0,"len":0}"#,
        0,
        0,
    );
    let r = open_bytes("zero_dim", &f);
    assert!(matches!(r, Err(FormatError::ZeroDim { .. })), "{r:?}");
    let f = one(
        r#"{"name":"w","dtype":"f32","shape":[1,1,1,1,1,1,1,1,1],"offset":0,"len":4}"#,
        4,
        64,
    );
    let r = open_bytes("rank", &f);
    assert!(
        matches!(r, Err(FormatError::RankTooLarge { rank: 9, .. })),
        "{r:?}"
    );
}

#[test]
fn overflowing_dimensions() {
    let big = u64::MAX / 2;
    for (i, shape) in [
        format!("[{big},4]"),
        format!("[{},{}]", 1u64 << 32, 1u64 << 32),
        format!("[{}]", u64::MAX),
    ]
    .into_iter()
    .enumerate()
    {
        let entry = format!(r#"{{"name":"w","dtype":"q8","shape":{shape},"offset":0,"len":4}}"#);
        let r = open_bytes(&format!("overflow{i}"), &one(&entry, 4, 64));
        assert!(
            matches!(&r, Err(FormatError::ShapeOverflow { name, .. }) if name == "w"),
            "{shape}: {r:?}"
        );
    }
}

#[test]
fn shape_times_dtype_differs_from_len() {
    for (i, (dtype, len)) in [("f32", 12), ("f16", 16), ("q8", 36), ("q4", 16)]
        .into_iter()
        .enumerate()
    {
        let entry =
            format!(r#"{{"name":"w","dtype":"{dtype}","shape":[2,2],"offset":0,"len":{len}}}"#);
        let r = open_bytes(&format!("len{i}"), &one(&entry, len, 64));
        assert!(
            matches!(r, Err(FormatError::LengthMismatch { .. })),
            "{dtype}: {r:?}"
        );
    }
    // The message names the tensor.
    let entry = r#"{"name":"unet.w","dtype":"q4","shape":[32],"offset":0,"len":16}"#;
    let e = open_bytes("len_msg", &one(entry, 16, 64)).unwrap_err();
    assert!(
        e.to_string().contains("`unet.w`") && e.to_string().contains("18"),
        "{e}"
    );
}

#[test]
fn misaligned_offset() {
    let f = one(
        r#"{"name":"w","dtype":"f32","shape":[1],"offset":4,"len":4}"#,
        8,
        64,
    );
    let r = open_bytes("misaligned", &f);
    assert!(
        matches!(r, Err(FormatError::Misaligned { offset: 4, .. })),
        "{r:?}"
    );
}

#[test]
fn offset_past_the_end() {
    let f = one(
        r#"{"name":"w","dtype":"f32","shape":[1],"offset":64,"len":4}"#,
        4,
        64,
    );
    let r = open_bytes("past_end", &f);
    assert!(matches!(r, Err(FormatError::OutOfBounds { .. })), "{r:?}");
    let huge = u64::MAX - 63; // aligned, offset + len overflows
    let entry = format!(r#"{{"name":"w","dtype":"f32","shape":[16],"offset":{huge},"len":64}}"#);
    let r = open_bytes("past_end_overflow", &one(&entry, 64, 64));
    assert!(matches!(r, Err(FormatError::OutOfBounds { .. })), "{r:?}");
}

#[test]
fn overlapping_tensors() {
    let header = r#"{"tensors":[
        {"name":"a","dtype":"f32","shape":[32],"offset":0,"len":128},
        {"name":"b","dtype":"f32","shape":[16],"offset":64,"len":64}]}"#;
    let r = open_bytes("overlap", &craft(header, &data(128)));
    assert!(
        matches!(&r, Err(FormatError::Overlap { first, second }) if first == "a" && second == "b"),
        "{r:?}"
    );
    // Identical ranges overlap too (table order does not matter).
    let header = r#"{"tensors":[
        {"name":"b","dtype":"f32","shape":[16],"offset":0,"len":64},
        {"name":"a","dtype":"f32","shape":[16],"offset":0,"len":64}]}"#;
    let r = open_bytes("overlap_same", &craft(header, &data(64)));
    assert!(matches!(r, Err(FormatError::Overlap { .. })), "{r:?}");
}

#[test]
fn gaps_between_tensors() {
    let f = one(
        r#"{"name":"w","dtype":"f32","shape":[16],"offset":64,"len":64}"#,
        0,
        128,
    );
    let r = open_bytes("gap_first", &f);
    assert!(
        matches!(
            r,
            Err(FormatError::Gap {
                offset: 64,
                expected: 0,
                ..
            })
        ),
        "{r:?}"
    );
    let header = r#"{"tensors":[
        {"name":"a","dtype":"f32","shape":[1],"offset":0,"len":4},
        {"name":"b","dtype":"f32","shape":[1],"offset":128,"len":4}]}"#;
    let mut d = vec![0u8; 192];
    d[0] = 1;
    d[128] = 1;
    let r = open_bytes("gap", &craft(header, &d));
    assert!(
        matches!(&r, Err(FormatError::Gap { name, expected: 64, .. }) if name == "b"),
        "{r:?}"
    );
}

#[test]
fn duplicate_names() {
    let header = r#"{"tensors":[
        {"name":"w","dtype":"f32","shape":[1],"offset":0,"len":4},
        {"name":"w","dtype":"f32","shape":[1],"offset":64,"len":4}]}"#;
    let mut d = vec![0u8; 128];
    d[0] = 1;
    d[64] = 1;
    let r = open_bytes("dup_name", &craft(header, &d));
    assert!(
        matches!(&r, Err(FormatError::DuplicateName { name }) if name == "w"),
        "{r:?}"
    );
}

#[test]
fn trailing_bytes() {
    let mut f = valid();
    f.extend_from_slice(&[0u8; 64]);
    let r = open_bytes("trailing", &f);
    assert!(matches!(r, Err(FormatError::FileLength { .. })), "{r:?}");
}

#[test]
fn nonzero_padding() {
    let f = valid();
    // Padding between the JSON header and the data section.
    let mut g = f.clone();
    let at = data_offset(&f) - 1;
    g[at] = b' ';
    let r = open_bytes("pad_header", &g);
    assert!(
        matches!(r, Err(FormatError::NonZeroPadding { at: a }) if a == at as u64),
        "{r:?}"
    );
    // Padding after tensor `w`, and the tail padding after the last tensor.
    for (i, rel) in [16usize, 63, 68, 127].into_iter().enumerate() {
        let mut g = f.clone();
        g[data_offset(&f) + rel] = 0x80;
        let r = open_bytes(&format!("pad{i}"), &g);
        assert!(
            matches!(r, Err(FormatError::NonZeroPadding { .. })),
            "{rel}: {r:?}"
        );
    }
}

#[test]
fn digest_mismatch() {
    let f = valid();
    let mut g = f.clone();
    g[data_offset(&f) + 3] ^= 0x01; // a byte of tensor `w`
    let m = open_bytes("digest_data", &g).expect("open does not hash the data");
    assert!(matches!(
        m.verify_digest(),
        Err(FormatError::DigestMismatch { .. })
    ));
    // The digest covers the preamble fields and the header too.
    let mut g = f.clone();
    g[30] ^= 0xff; // inside the digest itself
    let m = open_bytes("digest_field", &g).unwrap();
    assert!(matches!(
        m.verify_digest(),
        Err(FormatError::DigestMismatch { .. })
    ));
    let mut g = f.clone();
    let at = g.iter().position(|&b| b == b'k').unwrap(); // "config":{"k":1} -> "j"
    g[at] = b'j';
    let m = open_bytes("digest_header", &g).unwrap();
    assert!(matches!(
        m.verify_digest(),
        Err(FormatError::DigestMismatch { .. })
    ));
    // The untouched file verifies.
    open_bytes("digest_ok", &f)
        .unwrap()
        .verify_digest()
        .unwrap();
}

#[test]
fn missing_file_is_io_error() {
    let r = ModelFile::open(tmp_path("does-not-exist-0f3a"));
    assert!(matches!(r, Err(FormatError::Io { .. })), "{r:?}");
}

/// A real file from the writer, with every dtype, an odd block count and a scalar.
fn writer_file() -> Vec<u8> {
    let path = tmp_path("fuzz_base");
    let mut w = ModelWriter::new(json!({"config": {"ch": [1, 2]}, "name": "fuzz"})).unwrap();
    let v: Vec<f32> = (0..70).map(|i| (i as f32 * 0.37).sin()).collect();
    w.add("a", &[5, 7], &v[..35], DType::F32).unwrap();
    w.add("b", &[3], &v[..3], DType::F16).unwrap();
    w.add("c", &[70], &v, DType::Q8).unwrap();
    w.add("d", &[2, 33], &v[..66], DType::Q4).unwrap();
    w.add("e", &[], &[1.5], DType::F32).unwrap();
    w.write(&path).unwrap();
    std::fs::read(&path).unwrap()
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutations_never_panic() {
    let base = writer_file();
    ModelFile::from_bytes(base.clone())
        .unwrap()
        .verify_digest()
        .unwrap();
    let header_end = data_offset(&base);
    let path = tmp_path("fuzz");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let interesting: [u8; 12] = [
        0, 0xff, 0x7f, 0x80, b'"', b'[', b']', b'{', b'}', b',', b'9', b'-',
    ];
    let (mut opened, mut rejected) = (0, 0);
    for iter in 0..2000 {
        let mut f = base.clone();
        for _ in 0..1 + rng.below(3) {
            // Half of the mutations hit the preamble and header, where the structure is.
            let pos = if rng.below(2) == 0 {
                rng.below(header_end)
            } else {
                rng.below(f.len())
            };
            match rng.below(8) {
                0 => f.truncate(pos),
                1 => {
                    if let Some(b) = f.get_mut(pos) {
                        *b ^= 1 << rng.below(8);
                    }
                }
                2 => {
                    if let Some(b) = f.get_mut(pos) {
                        *b = rng.next() as u8;
                    }
                }
                3 => {
                    if let Some(b) = f.get_mut(pos) {
                        *b = interesting[rng.below(interesting.len())];
                    }
                }
                4 => {
                    if pos < f.len() {
                        f.remove(pos);
                    }
                }
                5 => f.insert(pos.min(f.len()), interesting[rng.below(interesting.len())]),
                6 => {
                    // An ASCII digit inside the header changes numbers (offsets, lengths, dims).
                    if let Some(b) = f.get_mut(pos) {
                        if b.is_ascii_digit() {
                            *b = b'0' + rng.below(10) as u8;
                        }
                    }
                }
                _ => {
                    let v = [0u64, 1, 63, 64, u64::MAX, u64::MAX / 2, 1 << 32][rng.below(7)];
                    for (i, b) in v.to_le_bytes().into_iter().enumerate() {
                        if let Some(slot) = f.get_mut(pos + i) {
                            *slot = b;
                        }
                    }
                }
            }
        }
        std::fs::write(&path, &f).unwrap();
        match ModelFile::open(&path) {
            Ok(m) => {
                opened += 1;
                for t in m.tensors() {
                    let view = m.tensor(&t.name).expect("validated tensor is reachable");
                    assert_eq!(view.to_f32().len(), t.numel(), "iteration {iter}");
                }
                // Every byte but the digest field is hashed, and a changed digest field no longer
                // matches: any change that still opens must fail verification.
                assert_eq!(m.verify_digest().is_ok(), f == base, "iteration {iter}");
            }
            Err(e) => {
                rejected += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    eprintln!("mutations: {opened} opened, {rejected} rejected");
    assert!(
        rejected > 1000,
        "the mutations should mostly break the file"
    );
}
