//! A typed reader over one JSON object of `config.json`: every error names the full field path
//! (`text_config.head_dim`), and wrong types are errors, never silently defaulted.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub(super) fn to_u32(field: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::config(field, format!("{v} does not fit a token id")))
}

/// A JSON object with its path, so every error names the full field (`text_config.head_dim`).
pub(super) struct Obj<'a> {
    path: String,
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Obj<'a> {
    pub(super) fn root(v: &'a Value) -> Result<Self> {
        match v {
            Value::Object(map) => Ok(Obj { path: String::new(), map: Some(map) }),
            _ => Err(Error::config("config.json", "expected a JSON object at the top level")),
        }
    }
    pub(super) fn empty(path: &str) -> Self {
        Obj { path: path.to_string(), map: None }
    }
    pub(super) fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key))
    }
    pub(super) fn child(&self, key: &str) -> Result<Option<Obj<'a>>> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj { path: self.field(key), map: Some(map) })),
            Some(other) => Err(Error::config(self.field(key), format!("expected an object, found {other}"))),
        }
    }
    pub(super) fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Error::config(self.field(key), format!("expected a string, found {other}"))),
        }
    }
    pub(super) fn uint(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => usize::try_from(n)
                    .map(Some)
                    .map_err(|_| Error::config(self.field(key), format!("{n} is too large"))),
                None => Err(Error::config(self.field(key), format!("expected a non-negative integer, found {v}"))),
            },
        }
    }
    pub(super) fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) => Ok(Some(x)),
                None => Err(Error::config(self.field(key), format!("expected a number, found {v}"))),
            },
        }
    }
    /// A number where an explicit `null` means "off" and absence means the class default.
    pub(super) fn nullable_float(&self, key: &str, default: Option<f64>) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(_) => self.float(key),
        }
    }
    pub(super) fn token_ids(&self, key: &str) -> Result<Option<Vec<u32>>> {
        let bad = |v: &Value| Error::config(self.field(key), format!("expected a token id or a list of them, found {v}"));
        let one = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad(v));
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items.iter().map(one).collect::<Result<Vec<_>>>().map(Some),
            Some(v) => one(v).map(|id| Some(vec![id])),
        }
    }
}
