//! Writer/reader round trips. Malformed files are in `tests/format_malformed.rs`.
use std::path::PathBuf;

use serde_json::json;

use super::quant::{dequantize_q4, dequantize_q8, quantize_q4, quantize_q8};
use super::*;

fn tmp(name: &str) -> PathBuf {
    crate::scratch::scratch("format-unit").join(name)
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

fn meta() -> serde_json::Value {
    json!({
        "config": {"unet": {"channels": [320, 640], "attention": true}},
        "sampler": {"steps": 20, "guidance": 7.5},
        "tokenizer": {"model": {"vocab": {"a": 0}}},
        "provenance": "unit test ✓",
    })
}

#[test]
fn round_trip_every_dtype() {
    let path = tmp("round_trip.ldm");
    let mut f32s = values(37, 1);
    f32s[3] = f32::NAN;
    f32s[4] = f32::NEG_INFINITY;
    f32s[5] = -0.0;
    f32s[6] = f32::MIN_POSITIVE / 8.0; // subnormal
    let f16s: Vec<f32> = values(70, 2)
        .iter()
        .map(|&x| half::f16::from_f32(x * 1000.0).to_f32())
        .collect();
    // Already-quantized values: re-quantizing them must give the same bytes.
    let x8 = values(100, 3);
    let q8 = quantize_q8(&x8);
    let y8 = dequantize_q8(&q8, x8.len());
    let x4 = values(33, 4);
    let q4 = quantize_q4(&x4);
    let y4 = dequantize_q4(&q4, x4.len());

    let mut w = ModelWriter::new(meta()).unwrap();
    w.add("a.f32", &[37], &f32s, DType::F32).unwrap();
    w.add("b.f16", &[7, 10], &f16s, DType::F16).unwrap();
    w.add("c.q8", &[4, 25], &y8, DType::Q8).unwrap();
    w.add("d.q4", &[3, 1, 11], &y4, DType::Q4).unwrap();
    w.add("e.scalar", &[], &[42.5], DType::F32).unwrap();
    w.add_raw("f.raw_q8", &[100], DType::Q8, q8.clone())
        .unwrap();
    let report = w.write(&path).unwrap();

    let m = ModelFile::open(&path).unwrap();
    assert_eq!(m.file_len(), report.file_len);
    assert_eq!(m.file_len(), std::fs::metadata(&path).unwrap().len());
    assert_eq!(m.file_len() % ALIGN, 0);
    assert_eq!(m.data_offset(), report.data_offset);
    assert_eq!(m.data_offset() % ALIGN, 0);
    assert_eq!(m.digest(), report.digest);
    assert_eq!(report.digest_hex().len(), 64);
    m.verify_digest().unwrap();
    assert_eq!(m.meta(), &meta());
    assert_eq!(m.path(), path.as_path());

    let names: Vec<&str> = m.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["a.f32", "b.f16", "c.q8", "d.q4", "e.scalar", "f.raw_q8"]
    );
    for t in m.tensors() {
        assert_eq!(t.offset % ALIGN, 0);
        assert_eq!(Some(t.len), t.dtype.byte_len(t.numel() as u64));
    }

    let a = m.tensor("a.f32").unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.to_f32()), bits(&f32s));
    let b = m.tensor("b.f16").unwrap();
    assert_eq!(
        (b.dtype(), b.shape(), b.numel()),
        (DType::F16, &[7usize, 10][..], 70)
    );
    assert_eq!(b.to_f32(), f16s);
    let c = m.tensor("c.q8").unwrap();
    assert_eq!(c.bytes, &q8[..]);
    assert_eq!(c.to_f32(), y8);
    let d = m.tensor("d.q4").unwrap();
    assert_eq!(d.bytes, &q4[..]);
    assert_eq!(d.to_f32(), y4);
    let e = m.tensor("e.scalar").unwrap();
    assert_eq!((e.shape(), e.numel(), e.to_f32()), (&[][..], 1, vec![42.5]));
    assert_eq!(m.tensor("f.raw_q8").unwrap().bytes, &q8[..]);
    assert!(m.tensor("missing").is_none());

    // from_bytes applies the same validation to the same bytes.
    let owned = ModelFile::from_bytes(std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(owned.tensors(), m.tensors());
    owned.verify_digest().unwrap();
}

#[test]
fn to_bytes_is_the_written_file() {
    let path = tmp("to_bytes.ldm");
    let mut w = ModelWriter::new(json!({"v": 1})).unwrap();
    w.add("a", &[3, 40], &values(120, 2), DType::Q4).unwrap();
    w.add("b", &[5], &values(5, 3), DType::F32).unwrap();
    w.write(&path).unwrap();
    let bytes = w.to_bytes().unwrap();
    assert_eq!(bytes, std::fs::read(&path).unwrap());
    ModelFile::from_bytes(bytes)
        .unwrap()
        .verify_digest()
        .unwrap();
}

#[test]
fn empty_model() {
    let path = tmp("empty.ldm");
    ModelWriter::new(json!({})).unwrap().write(&path).unwrap();
    let m = ModelFile::open(&path).unwrap();
    assert!(m.tensors().is_empty());
    assert_eq!(m.meta(), &json!({}));
    assert_eq!(m.file_len(), m.data_offset());
    m.verify_digest().unwrap();
}

#[test]
fn replace_keeps_live_mapping_valid() {
    let path = tmp("replace.ldm");
    let mut w = ModelWriter::new(json!({"v": 1})).unwrap();
    w.add("t", &[1000], &values(1000, 5), DType::F32).unwrap();
    w.write(&path).unwrap();
    let old = ModelFile::open(&path).unwrap();
    let before = old.tensor("t").unwrap().to_f32();

    let mut w = ModelWriter::new(json!({"v": 2})).unwrap();
    w.add("t", &[10], &[1.0; 10], DType::F16).unwrap();
    w.write(&path).unwrap();

    // The old mapping still sees the old, complete file.
    assert_eq!(old.tensor("t").unwrap().to_f32(), before);
    old.verify_digest().unwrap();
    let new = ModelFile::open(&path).unwrap();
    assert_eq!(new.meta()["v"], 2);
    assert_eq!(new.tensor("t").unwrap().to_f32(), vec![1.0; 10]);
    // No temporary files are left behind.
    let dir = path.parent().unwrap();
    let leftovers = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("replace.ldm.tmp-")
        })
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn writer_rejects_bad_input() {
    assert!(matches!(
        ModelWriter::new(json!([1])),
        Err(FormatError::BadMeta)
    ));
    assert!(matches!(
        ModelWriter::new(json!({"tensors": []})),
        Err(FormatError::BadMeta)
    ));
    let mut w = ModelWriter::new(json!({})).unwrap();
    w.add("x", &[2], &[1.0, 2.0], DType::F32).unwrap();
    let dup = w.add("x", &[2], &[1.0, 2.0], DType::F32);
    assert!(matches!(dup, Err(FormatError::DuplicateName { .. })));
    let short = w.add("y", &[3], &[1.0, 2.0], DType::F32);
    assert!(matches!(
        short,
        Err(FormatError::DataLength {
            numel: 3,
            found: 2,
            ..
        })
    ));
    assert!(matches!(
        w.add("z", &[0, 3], &[], DType::F32),
        Err(FormatError::ZeroDim { .. })
    ));
    assert!(matches!(
        w.add("", &[1], &[1.0], DType::F32),
        Err(FormatError::BadName { .. })
    ));
    assert!(matches!(
        w.add("a\nb", &[1], &[1.0], DType::F32),
        Err(FormatError::BadName { .. })
    ));
    let inf = w.add("q", &[2], &[1.0, f32::INFINITY], DType::Q8);
    assert!(matches!(inf, Err(FormatError::Unrepresentable { .. })));
    let big = w.add("q", &[1], &[1e9], DType::Q4);
    assert!(matches!(big, Err(FormatError::Unrepresentable { .. })));
    let h = w.add("h", &[1], &[1e6], DType::F16);
    assert!(matches!(h, Err(FormatError::Unrepresentable { .. })));
    let raw = w.add_raw("r", &[32], DType::Q4, vec![0u8; 17]);
    assert!(matches!(
        raw,
        Err(FormatError::LengthMismatch {
            expected: 18,
            found: 17,
            ..
        })
    ));
    let huge = w.add_raw("r", &[usize::MAX, 4], DType::F32, vec![]);
    assert!(matches!(huge, Err(FormatError::ShapeOverflow { .. })));
    assert_eq!(w.len(), 1);
}
