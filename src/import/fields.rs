//! Reading a diffusers/transformers config.json field by field: every key we know is used,
//! checked to hold the one value we implement (an error naming the file and the field, never a
//! silently different model), or explicitly ignored; keys we do not know are logged at debug
//! level and ignored, since newer diffusers/transformers versions keep adding them.
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

pub struct Fields {
    file: String,
    map: Map<String, Value>,
    used: BTreeSet<String>,
}

/// Equal as config values: numbers compare by value (1 == 1.0), a list equals a scalar when all
/// its entries do (diffusers accepts both for per-block settings).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(xs), y) if !y.is_array() => xs.iter().all(|x| same(x, y)),
        _ => a == b,
    }
}

impl Fields {
    pub fn new(file: &str, v: Value) -> Result<Self> {
        match v {
            Value::Object(map) => Ok(Self {
                file: file.to_string(),
                map,
                used: BTreeSet::new(),
            }),
            _ => Err(Error::Config(format!("{file} is not a JSON object"))),
        }
    }

    pub fn err(&self, field: &str, msg: impl std::fmt::Display) -> Error {
        Error::Config(format!("{}: field `{field}`: {msg}", self.file))
    }

    /// The raw value, marking the field used; `None` if absent or null.
    pub fn raw(&mut self, key: &str) -> Option<Value> {
        self.used.insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_null()).cloned()
    }

    pub fn opt<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| self.err(key, e)),
        }
    }

    pub fn req<T: DeserializeOwned>(&mut self, key: &str) -> Result<T> {
        self.opt(key)?
            .ok_or_else(|| self.err(key, "is required but missing"))
    }

    pub fn or<T: DeserializeOwned>(&mut self, key: &str, default: T) -> Result<T> {
        Ok(self.opt(key)?.unwrap_or(default))
    }

    /// The field, when present and not null, must be `want` (the only behaviour implemented).
    pub fn expect(&mut self, key: &str, want: Value) -> Result<()> {
        match self.raw(key) {
            Some(v) if !same(&v, &want) => Err(Error::Config(format!(
                "{}: unsupported config field `{key}` = {v} (only {want} is supported)",
                self.file
            ))),
            _ => Ok(()),
        }
    }

    /// The field must be absent or null.
    pub fn expect_null(&mut self, key: &str) -> Result<()> {
        match self.raw(key) {
            Some(v) => Err(Error::Config(format!(
                "{}: unsupported config field `{key}` = {v} (only null is supported)",
                self.file
            ))),
            None => Ok(()),
        }
    }

    /// Fields that do not change f32 inference (dropout, fp16 upcasting, versions, ...).
    pub fn ignore(&mut self, keys: &[&str]) {
        self.used.extend(keys.iter().map(|k| k.to_string()));
    }

    /// A float field that Python may have written as `Infinity`, `-Infinity` or `NaN`
    /// (see [`super::json`]); `default` when absent or null.
    pub fn float_or(&mut self, key: &str, default: f64) -> Result<f64> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => {
                super::json::number(&v).ok_or_else(|| self.err(key, format!("{v} is not a number")))
            }
        }
    }

    /// Fields neither used nor ignored. Every key we know to change the math is read or
    /// refused by name above; the rest are keys newer diffusers/transformers versions add
    /// (bookkeeping, options of code paths we do not take), so they are logged at debug level
    /// and ignored rather than failing an import.
    pub fn finish(self) -> Result<()> {
        for k in self
            .map
            .keys()
            .filter(|k| !k.starts_with('_') && !self.used.contains(*k))
        {
            log::debug!(
                "{}: ignoring config field `{k}` = {} (unknown to this importer)",
                self.file,
                self.map[k]
            );
        }
        Ok(())
    }
}
