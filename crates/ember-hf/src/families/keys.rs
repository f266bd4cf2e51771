//! Typed access to a `config.json` object, with errors that name the key.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::HfError;

/// Typed access to a JSON object; errors name the key.
pub(crate) struct Keys<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
    /// Prefix for nested objects (`rope_scaling.`).
    prefix: &'static str,
}

impl<'a> Keys<'a> {
    /// The top-level object of the file at `path`.
    pub(crate) fn new(map: &'a Map<String, Value>, path: &'a Path) -> Self {
        Self {
            map,
            path,
            prefix: "",
        }
    }

    /// A nested object, its keys named with `prefix` (`rope_scaling.`) in errors.
    pub(crate) fn nested(&self, map: &'a Map<String, Value>, prefix: &'static str) -> Self {
        Self {
            map,
            path: self.path,
            prefix,
        }
    }

    pub(crate) fn err(&self, key: &str, message: impl std::fmt::Display) -> HfError {
        HfError::new(self.path, format!("`{}{key}` {message}", self.prefix))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// `key` converted by `convert`, `None` when absent; an error says it `must be {what}`.
    fn opt<T>(
        &self,
        key: &str,
        what: &str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, HfError> {
        self.get(key)
            .map(|v| convert(v).ok_or_else(|| self.err(key, format!("must be {what}, got {v}"))))
            .transpose()
    }

    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>, HfError> {
        self.opt(key, "a non-negative integer", |v| {
            v.as_u64().and_then(|n| usize::try_from(n).ok())
        })
    }

    pub(crate) fn usize(&self, key: &str) -> Result<usize, HfError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(key, "is missing"))
    }

    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>, HfError> {
        self.opt(key, "a number", Value::as_f64)
    }

    pub(crate) fn f64(&self, key: &str) -> Result<f64, HfError> {
        self.opt_f64(key)?
            .ok_or_else(|| self.err(key, "is missing"))
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool, HfError> {
        Ok(self
            .opt(key, "true or false", Value::as_bool)?
            .unwrap_or(default))
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>, HfError> {
        self.opt(key, "a string", Value::as_str)
    }

    /// A token id or a list of them (each a 32-bit unsigned integer).
    pub(crate) fn token_ids(&self, key: &str) -> Result<Vec<u32>, HfError> {
        let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    id(v).ok_or_else(|| {
                        self.err(key, format!("must hold token ids below 2^32, got {v}"))
                    })
                })
                .collect(),
            Some(v) => id(v)
                .map(|n| vec![n])
                .ok_or_else(|| self.err(key, format!("must be a token id below 2^32, got {v}"))),
        }
    }
}
