//! JSON as Python writes it, for imported config files only.
//!
//! diffusers and transformers save configs with Python's `json.dumps`, which (with its default
//! `allow_nan=True`) writes the non-finite floats as the bare tokens `Infinity`, `-Infinity`
//! and `NaN`. Those are not JSON, so serde_json refuses them: DPMSolverMultistepScheduler's
//! `"lambda_min_clipped": -Infinity` made whole folders unimportable. Here those three tokens,
//! outside strings, become the strings `"Infinity"`, `"-Infinity"` and `"NaN"` before parsing,
//! and [`number`] reads a field that may hold one of them.
//!
//! The `.ldm` header is parsed elsewhere, strictly; this leniency is for imported configs only.
use crate::{Error, Result};
use serde_json::Value;

const TOKENS: [(&str, &str); 3] = [
    ("-Infinity", "\"-Infinity\""),
    ("Infinity", "\"Infinity\""),
    ("NaN", "\"NaN\""),
];

/// Parses `text` as JSON that may contain Python's `Infinity`, `-Infinity` and `NaN` tokens.
/// `what` names the file in errors.
pub fn parse(text: &str, what: &str) -> Result<Value> {
    serde_json::from_str(&quote_non_finite(text)).map_err(|e| Error::Config(format!("{what}: {e}")))
}

/// Rewrites the non-finite tokens outside string literals as strings. Everything else is kept
/// byte for byte, so serde_json's error positions still point into the original line.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some((tok, quoted)) = TOKENS.iter().find(|(t, _)| rest.starts_with(t)) {
            // A token only where a value can start, so `NaNa` or `xInfinity` stay errors.
            let after = rest[tok.len()..].chars().next();
            if !after.is_some_and(|a| a.is_alphanumeric() || a == '_') {
                out.push_str(quoted);
                rest = &rest[tok.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A config number that may be one of the quoted non-finite tokens: `Some(f64)` for a number,
/// `Infinity`, `-Infinity` or `NaN`; `None` for anything else.
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_tokens_parse() {
        let v = parse(
            r#"{"a": -Infinity, "b": Infinity, "c": NaN, "d": [1, -Infinity], "e": 1.5}"#,
            "t",
        )
        .unwrap();
        assert_eq!(number(&v["a"]), Some(f64::NEG_INFINITY));
        assert_eq!(number(&v["b"]), Some(f64::INFINITY));
        assert!(number(&v["c"]).unwrap().is_nan());
        assert_eq!(number(&v["d"][1]), Some(f64::NEG_INFINITY));
        assert_eq!(number(&v["e"]), Some(1.5));
    }

    #[test]
    fn strings_are_left_alone() {
        let v = parse(r#"{"s": "NaN and -Infinity \" Infinity", "t": "\\"}"#, "t").unwrap();
        assert_eq!(v["s"], "NaN and -Infinity \" Infinity");
        assert_eq!(v["t"], "\\");
        assert!(number(&v["s"]).is_none());
    }

    #[test]
    fn other_invalid_json_is_still_an_error() {
        for bad in [
            r#"{"a": NaNa}"#,
            r#"{"a": inf}"#,
            r#"{"a": Infinityx}"#,
            r#"{"a": 1,}"#,
        ] {
            let e = parse(bad, "cfg.json").unwrap_err().to_string();
            assert!(e.contains("cfg.json"), "{bad}: {e}");
        }
    }
}
