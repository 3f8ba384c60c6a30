//! Minimal `.npy` (format 1.0/2.0, little-endian f32, C order) reading and writing, so latents
//! and initial noise can be exchanged with numpy/diffusers runs.
use crate::backend::Tensor;
use crate::{Error, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Input(format!(
        "{}: not a float32 .npy file: {msg}",
        path.display()
    ))
}

pub fn read_f32(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "bad magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(path, format!("unsupported version {v}"))),
    };
    let header = bytes
        .get(start..start.saturating_add(hlen))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad(path, "truncated header"))?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    if !compact.contains("'descr':'<f4'") {
        return Err(bad(
            path,
            format!("dtype must be '<f4', header is {header}"),
        ));
    }
    if compact.contains("'fortran_order':True") {
        return Err(bad(path, "fortran order is not supported"));
    }
    let shape_str = compact
        .split("'shape':(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad(path, "no shape"))?;
    let shape: Vec<usize> = shape_str
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(path, format!("bad shape {shape_str}")))
        })
        .collect::<Result<_>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(path, "shape overflows"))?;
    let data = &bytes[start + hlen..];
    if Some(data.len()) != n.checked_mul(4) {
        return Err(bad(
            path,
            format!(
                "shape {shape:?} needs {} bytes of data, file has {}",
                n * 4,
                data.len()
            ),
        ));
    }
    let data = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Tensor::new(shape, data)
}

pub fn write_f32(path: &Path, t: &Tensor) -> Result<()> {
    let shape = match t.shape.len() {
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts on a 64-byte boundary, ending with a newline, as numpy does.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &t.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}
