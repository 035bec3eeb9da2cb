//! Streaming safetensors writer. Every shape is known before any data is read, so each file's
//! header is written first and tensors are appended in plan order, one slice at a time.
//! Files are written under a `.partial` name and renamed only when complete, so an interrupted
//! conversion never leaves a loadable-looking but truncated checkpoint.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::transform::OutputDtype;
use crate::error::{Error, Result};

/// One tensor to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: OutputDtype,
}

impl PlannedTensor {
    pub fn nbytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// One `.safetensors` file being written.
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    partial: PathBuf,
    out: Option<BufWriter<File>>,
    tensors: Vec<PlannedTensor>,
    next: usize,
    remaining: u64,
}

impl SafetensorsFile {
    /// Creates the file and writes its header.
    pub fn create(path: &Path, tensors: Vec<PlannedTensor>) -> Result<Self> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        let partial = path.with_file_name(name);
        let file = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        let mut out = BufWriter::with_capacity(8 << 20, file);
        out.write_all(&header_bytes(&tensors)?).map_err(|e| Error::io(&partial, e))?;
        Ok(SafetensorsFile { path: path.to_path_buf(), partial, out: Some(out), tensors, next: 0, remaining: 0 })
    }

    /// Starts the next tensor, which must be `name` (the plan fixes the order).
    pub fn begin(&mut self, name: &str) -> Result<()> {
        if self.remaining != 0 {
            return Err(Error::Internal(format!("tensor before `{name}` is incomplete in {}", self.path.display())));
        }
        match self.tensors.get(self.next) {
            Some(t) if t.name == name => {
                self.remaining = t.nbytes();
                self.next += 1;
                Ok(())
            }
            other => Err(Error::Internal(format!(
                "writing `{name}` but {} expects {:?} next",
                self.path.display(),
                other.map(|t| &t.name)
            ))),
        }
    }

    /// Whether every planned tensor has been started.
    pub fn is_full(&self) -> bool {
        self.next == self.tensors.len() && self.remaining == 0
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.get(self.next).is_some_and(|t| t.name == name)
    }

    /// Appends data to the current tensor.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 > self.remaining {
            return Err(Error::Internal(format!("{} bytes overflow the current tensor", bytes.len())));
        }
        let out = self.out.as_mut().ok_or_else(|| Error::Internal("write after finish".into()))?;
        out.write_all(bytes).map_err(|e| Error::io(&self.partial, e))?;
        self.remaining -= bytes.len() as u64;
        Ok(())
    }

    /// Flushes, checks completeness and moves the file to its final name.
    pub fn finish(mut self) -> Result<PathBuf> {
        if !self.is_full() {
            return Err(Error::Internal(format!("{} was closed before all tensors were written", self.path.display())));
        }
        if let Some(out) = self.out.take() {
            let file = out.into_inner().map_err(|e| Error::io(&self.partial, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&self.partial, e))?;
        }
        std::fs::rename(&self.partial, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(self.path.clone())
    }
}

impl Drop for SafetensorsFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// `u64` header length, then JSON padded with spaces to a multiple of 8 (as the safetensors
/// crate writes it, so the data stays aligned for memory-mapped loads).
fn header_bytes(tensors: &[PlannedTensor]) -> Result<Vec<u8>> {
    let mut map = Map::new();
    map.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.nbytes();
        let entry = json!({ "dtype": t.dtype.safetensors_name(), "shape": t.shape, "data_offsets": [offset, end] });
        if map.insert(t.name.clone(), entry).is_some() {
            return Err(Error::Convert(format!("tensor `{}` would be written twice", t.name)));
        }
        offset = end;
    }
    let mut text = serde_json::to_vec(&Value::Object(map)).map_err(|e| Error::Internal(e.to_string()))?;
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    Ok(out)
}

/// Splits a plan into files of at most `shard_bytes` of data (a larger tensor gets a file of
/// its own) and writes them in order, like transformers' `save_pretrained`.
pub(crate) struct ShardedWriter {
    dir: PathBuf,
    shards: Vec<Vec<PlannedTensor>>,
    current: Option<SafetensorsFile>,
    opened: usize,
    written: Vec<PathBuf>,
}

impl ShardedWriter {
    pub fn new(dir: &Path, tensors: Vec<PlannedTensor>, shard_bytes: u64) -> Result<Self> {
        if shard_bytes == 0 {
            return Err(Error::invalid("shard_bytes", "must be positive"));
        }
        let mut shards: Vec<Vec<PlannedTensor>> = Vec::new();
        let mut size = 0u64;
        for t in tensors {
            let n = t.nbytes();
            match shards.last_mut() {
                Some(shard) if size + n <= shard_bytes => {
                    shard.push(t);
                    size += n;
                }
                _ => {
                    shards.push(vec![t]);
                    size = n;
                }
            }
        }
        Ok(ShardedWriter { dir: dir.to_path_buf(), shards, current: None, opened: 0, written: Vec::new() })
    }

    fn file_name(&self, k: usize) -> String {
        match self.shards.len() {
            1 => "model.safetensors".to_string(),
            n => format!("model-{:05}-of-{n:05}.safetensors", k + 1),
        }
    }

    /// Starts tensor `name`, moving on to the next file when the current one is complete.
    pub fn begin(&mut self, name: &str) -> Result<()> {
        if self.current.as_ref().is_some_and(|f| f.is_full()) {
            if let Some(done) = self.current.take() {
                self.written.push(done.finish()?);
            }
        }
        if self.current.is_none() {
            let tensors = self
                .shards
                .get(self.opened)
                .cloned()
                .ok_or_else(|| Error::Internal(format!("`{name}` is beyond the planned tensors")))?;
            let path = self.dir.join(self.file_name(self.opened));
            self.current = Some(SafetensorsFile::create(&path, tensors)?);
            self.opened += 1;
        }
        match self.current.as_mut() {
            Some(f) if f.has(name) => f.begin(name),
            _ => Err(Error::Internal(format!("`{name}` is not the next planned tensor"))),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.current.as_mut().ok_or_else(|| Error::Internal("write before begin".into()))?.write(bytes)
    }

    /// Closes the last file and writes `model.safetensors.index.json` when there are several.
    /// Returns the files written (in order) and the total data size.
    pub fn finish(mut self) -> Result<(Vec<PathBuf>, u64)> {
        if let Some(last) = self.current.take() {
            self.written.push(last.finish()?);
        }
        if self.written.len() != self.shards.len() {
            return Err(Error::Internal(format!("wrote {} of {} shards", self.written.len(), self.shards.len())));
        }
        let total: u64 = self.shards.iter().flatten().map(PlannedTensor::nbytes).sum();
        let index = self.dir.join("model.safetensors.index.json");
        let single = self.dir.join("model.safetensors");
        // A stale file of the other layout would shadow or confuse the new one.
        let stale = if self.shards.len() > 1 { &single } else { &index };
        if stale.exists() {
            std::fs::remove_file(stale).map_err(|e| Error::io(stale, e))?;
        }
        if self.shards.len() > 1 {
            let mut map = Map::new();
            for (k, shard) in self.shards.iter().enumerate() {
                for t in shard {
                    map.insert(t.name.clone(), Value::String(self.file_name(k)));
                }
            }
            let value = json!({ "metadata": { "total_size": total }, "weight_map": map });
            let text = serde_json::to_string_pretty(&value).map_err(|e| Error::Internal(e.to_string()))?;
            std::fs::write(&index, text + "\n").map_err(|e| Error::io(&index, e))?;
        }
        Ok((self.written, total))
    }
}
