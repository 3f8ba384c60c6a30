//! The bundle format's rules (src/bundle/SPEC.md), one crafted bad bundle per rule, through the
//! same reader `ldm install` uses.
#[path = "support/bundles.rs"]
mod bundles;
#[path = "support/scratch.rs"]
mod scratch;

use bundles::{key, manifest, raw, signed};
use ldm_edge::bundle::{self, BundleError, BundleHeader, Manifest};

fn model() -> Vec<u8> {
    (0..4096u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// Reads, verifies against key 1 and streams out the model: the whole device-side check.
fn check(bytes: &[u8]) -> Result<Vec<u8>, BundleError> {
    let mut r = bytes;
    let h = BundleHeader::read(&mut r)?;
    let v = h.verify(&[key(1).verifying_key()])?;
    let mut out = Vec::new();
    v.copy_model(&mut r, &mut out, |_| {})?;
    Ok(out)
}

fn good() -> Vec<u8> {
    signed(&manifest(&model(), &key(1), 3), &key(1), &model())
}

/// A manifest JSON with one field replaced (or removed with `None`), signed by key 1.
fn with_field(field: &str, value: Option<serde_json::Value>) -> Vec<u8> {
    let m = manifest(&model(), &key(1), 3);
    let mut v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
    match value {
        Some(x) => v[field] = x,
        None => {
            v.as_object_mut().unwrap().remove(field);
        }
    }
    raw(&serde_json::to_vec(&v).unwrap(), Some(&key(1)), &model())
}

macro_rules! assert_err {
    ($bytes:expr, $pat:pat) => {{
        let r = check(&$bytes);
        assert!(
            matches!(r, Err($pat)),
            "expected {}, got {r:?}",
            stringify!($pat)
        );
    }};
}

#[test]
fn good_bundle_round_trips() {
    assert_eq!(check(&good()).unwrap(), model());
}

#[test]
fn write_bundle_output_verifies() {
    let dir = scratch::fresh("bundle-write");
    let (mp, bp) = (dir.join("m.bin"), dir.join("b.ldmb"));
    std::fs::write(&mp, model()).unwrap();
    let m = manifest(&model(), &key(1), 1);
    let len = bundle::write_bundle(&m, &key(1), &mp, &bp).unwrap();
    let bytes = std::fs::read(&bp).unwrap();
    assert_eq!(bytes.len() as u64, len);
    assert_eq!(check(&bytes).unwrap(), model());
    // A manifest that does not describe the model is never written.
    let mut wrong = m.clone();
    wrong.model_blake3[0] ^= 1;
    assert!(bundle::write_bundle(&wrong, &key(1), &mp, &dir.join("c.ldmb")).is_err());
    assert!(!dir.join("c.ldmb").exists());
}

#[test]
fn truncated_preamble() {
    assert_err!(good()[..50], BundleError::TruncatedPreamble { len: 50 });
    assert_err!(Vec::<u8>::new(), BundleError::TruncatedPreamble { len: 0 });
}

#[test]
fn bad_magic() {
    let mut b = good();
    b[0] = b'X';
    assert_err!(b, BundleError::BadMagic { .. });
}

#[test]
fn unsupported_version() {
    let mut b = good();
    b[8] = 2;
    assert_err!(b, BundleError::UnsupportedVersion { found: 2 });
}

#[test]
fn byte_order() {
    let mut b = good();
    b[12..16].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    assert_err!(b, BundleError::ByteOrder { .. });
}

#[test]
fn oversize_manifest_is_refused_before_allocation() {
    let mut b = good();
    b[16..20].copy_from_slice(&(bundle::MAX_MANIFEST_LEN + 1).to_le_bytes());
    assert_err!(b, BundleError::ManifestTooLarge { .. });
    b[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_err!(b, BundleError::ManifestTooLarge { .. });
}

#[test]
fn reserved_must_be_zero() {
    let mut b = good();
    b[20] = 1;
    assert_err!(b, BundleError::Reserved { found: 1 });
}

#[test]
fn truncated_manifest() {
    let b = good();
    assert_err!(
        b[..bundle::PREAMBLE_LEN + 10],
        BundleError::TruncatedManifest { .. }
    );
}

#[test]
fn manifest_utf8() {
    assert_err!(
        raw(b"{\"name\": \"\xff\"}", Some(&key(1)), &model()),
        BundleError::ManifestUtf8
    );
}

#[test]
fn manifest_json() {
    assert_err!(
        raw(b"{\"name\": ", Some(&key(1)), &model()),
        BundleError::ManifestJson(_)
    );
    assert_err!(
        raw(b"", Some(&key(1)), &model()),
        BundleError::ManifestJson(_)
    );
}

#[test]
fn manifest_not_object() {
    assert_err!(
        raw(b"[1, 2]", Some(&key(1)), &model()),
        BundleError::ManifestNotObject
    );
}

#[test]
fn duplicate_key() {
    let m = manifest(&model(), &key(1), 3).to_bytes();
    let text = String::from_utf8(m).unwrap();
    let dup = text.replacen('{', "{\"version\": 99,", 1);
    assert_err!(
        raw(dup.as_bytes(), Some(&key(1)), &model()),
        BundleError::DuplicateKey(_)
    );
}

#[test]
fn missing_fields() {
    for f in [
        "name",
        "version",
        "model_len",
        "model_blake3",
        "min_runtime",
        "boards",
        "memory_bytes",
        "created",
        "expires",
    ] {
        let r = check(&with_field(f, None));
        assert!(
            matches!(r, Err(BundleError::MissingField(x)) if x == f),
            "{f}: {r:?}"
        );
    }
}

#[test]
fn unknown_field() {
    assert_err!(
        with_field("install_script", Some("rm -rf /".into())),
        BundleError::UnknownField(_)
    );
}

#[test]
fn bad_fields() {
    use serde_json::json;
    let cases = [
        ("name", json!("")),
        ("name", json!("a\nb")),
        ("name", json!(7)),
        ("version", json!(0)),
        ("version", json!(-1)),
        ("version", json!(1.5)),
        ("version", json!("2")),
        ("model_len", json!(10)),
        ("model_blake3", json!("00")),
        ("model_blake3", json!("Z".repeat(64))),
        ("min_runtime", json!("1.2")),
        ("min_runtime", json!("1.+2.3")),
        ("boards", json!("rpi4")),
        ("boards", json!(["rpi 4"])),
        ("boards", json!(["rpi4", "rpi4"])),
        ("boards", json!(vec!["b"; 257])),
        ("memory_bytes", json!("1G")),
        ("expires", json!(0)),
    ];
    for (f, v) in cases {
        let r = check(&with_field(f, Some(v.clone())));
        assert!(
            matches!(&r, Err(BundleError::BadField { field, .. }) if *field == f),
            "{f} = {v}: {r:?}"
        );
    }
}

#[test]
fn model_too_large() {
    assert_err!(
        with_field("model_len", Some((bundle::MAX_MODEL_LEN + 1).into())),
        BundleError::ModelTooLarge { .. }
    );
    assert_err!(
        with_field("model_len", Some(u64::MAX.into())),
        BundleError::ModelTooLarge { .. }
    );
}

#[test]
fn unsigned() {
    let m = manifest(&model(), &key(1), 3);
    assert_err!(raw(&m.to_bytes(), None, &model()), BundleError::Unsigned);
}

#[test]
fn wrong_key() {
    // Signed by an untrusted key that names itself.
    let m = manifest(&model(), &key(2), 3);
    assert_err!(
        signed(&m, &key(2), &model()),
        BundleError::UnknownKey { .. }
    );
    // Signed by an untrusted key that claims to be the trusted one.
    let m = manifest(&model(), &key(1), 3);
    let forged = bundles::raw_named(&m.to_bytes(), Some(&key(2)), &key(1), &model());
    assert_err!(forged, BundleError::BadSignature { .. });
}

#[test]
fn flipped_byte_in_manifest() {
    let mut b = good();
    let at = bundle::PREAMBLE_LEN
        + String::from_utf8_lossy(&b[bundle::PREAMBLE_LEN..])
            .find("test-model")
            .unwrap();
    b[at] = b'T';
    assert_err!(b, BundleError::BadSignature { .. });
}

#[test]
fn flipped_byte_in_signature() {
    for at in [32, 63, 95] {
        let mut b = good();
        b[at] ^= 0x40;
        assert_err!(b, BundleError::BadSignature { .. });
    }
}

#[test]
fn flipped_byte_in_key_id() {
    let mut b = good();
    b[24] ^= 0x40;
    assert_err!(b, BundleError::UnknownKey { .. });
}

#[test]
fn non_canonical_signature_is_refused() {
    // verify_strict: S + L (the group order) is the same signature to a lax verifier.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut b = good();
    let mut carry = 0u16;
    for i in 0..32 {
        let s = b[64 + i] as u16 + L[i] as u16 + carry;
        b[64 + i] = s as u8;
        carry = s >> 8;
    }
    assert_err!(b, BundleError::BadSignature { .. });
}

#[test]
fn flipped_byte_in_model() {
    let mut b = good();
    let n = b.len();
    b[n - 100] ^= 1;
    assert_err!(b, BundleError::DigestMismatch { .. });
}

#[test]
fn truncated_model() {
    let b = good();
    assert_err!(b[..b.len() - 1], BundleError::TruncatedModel { missing: 1 });
}

#[test]
fn trailing_bytes() {
    let mut b = good();
    b.push(0);
    assert_err!(b, BundleError::TrailingBytes);
}

#[test]
fn key_files() {
    let k = key(1);
    let text = bundle::public_key_text(&k.verifying_key());
    assert_eq!(bundle::parse_public_key(&text).unwrap(), k.verifying_key());
    let s = bundle::secret_key_text(&k);
    assert_eq!(
        bundle::parse_secret_key(&s).unwrap().to_bytes(),
        k.to_bytes()
    );
    assert!(bundle::parse_public_key("abc").is_err());
    assert!(bundle::parse_public_key(&"g".repeat(64)).is_err());
    // The identity point: small order, refused.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let weak_hex: String = weak.iter().map(|b| format!("{b:02x}")).collect();
    assert!(bundle::parse_public_key(&weak_hex).is_err());
}

#[test]
fn manifest_round_trips() {
    let mut m = manifest(&model(), &key(1), 9);
    m.boards = vec!["rpi4".into(), "jetson-nano".into()];
    m.memory_bytes = Some(123);
    assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
}

#[test]
fn every_single_bit_flip_and_truncation_is_refused() {
    // Everything in a bundle is covered by the preamble checks, the signature or the model
    // digest, so no corruption anywhere may pass (and none may panic).
    let b = good();
    for i in 0..b.len() {
        let mut m = b.clone();
        m[i] ^= 1 << (i % 8);
        assert!(check(&m).is_err(), "a flip at byte {i} was accepted");
    }
    for n in (0..b.len()).step_by(7) {
        assert!(
            check(&b[..n]).is_err(),
            "truncation to {n} bytes was accepted"
        );
    }
}
