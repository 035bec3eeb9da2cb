//! One parsed tokenizer per `tokenizer.json` file in the process.
//!
//! PaliGemma's tokenizer takes about 120 MB once parsed, and a server that loads the same
//! checkpoint twice (two devices, two dtypes, a reload) would hold it twice. Models loaded from
//! the same unchanged file share one instead, for as long as one of them holds it: the cache
//! keeps only weak references, so it never keeps a tokenizer alive by itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use tokenizers::Tokenizer;

use super::length::PromptBound;
use super::PromptTokenizer;
use crate::error::{Error, Result};
use crate::files::{read_capped, MAX_TOKENIZER_BYTES};

/// What identifies one version of one file: its canonical path, size and modification time.
#[derive(Clone, PartialEq, Eq)]
struct FileKey {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

struct Entry {
    key: FileKey,
    tokenizer: Weak<Tokenizer>,
    byte_fallback: bool,
    bound: PromptBound,
}

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// Loads `path` with `parse`, or returns the tokenizer an earlier load of the same file made.
pub(super) fn load(path: &Path, parse: impl FnOnce(&[u8]) -> Result<PromptTokenizer>) -> Result<PromptTokenizer> {
    let cant = |e: std::io::Error| Error::Tokenizer(format!("cannot read {}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(cant)?;
    let key = meta.is_file().then(|| {
        Some(FileKey { path: std::fs::canonicalize(path).ok()?, len: meta.len(), modified: meta.modified().ok() })
    });
    let key = key.flatten();
    if let Some(found) = key.as_ref().and_then(lookup) {
        return Ok(found);
    }
    // Not a regular file, too large, unreadable: `read_capped` says which.
    let bytes = read_capped(path, MAX_TOKENIZER_BYTES).map_err(cant)?;
    let parsed = parse(&bytes)?;
    if let Some(key) = key {
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|e| e.tokenizer.strong_count() > 0 && e.key != key);
        cache.push(Entry {
            key,
            tokenizer: Arc::downgrade(&parsed.inner),
            byte_fallback: parsed.byte_fallback,
            bound: parsed.bound,
        });
    }
    Ok(parsed)
}

fn lookup(key: &FileKey) -> Option<PromptTokenizer> {
    let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let entry = cache.iter().find(|e| &e.key == key)?;
    Some(PromptTokenizer { inner: entry.tokenizer.upgrade()?, byte_fallback: entry.byte_fallback, bound: entry.bound })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_is_shared_until_dropped_and_reparsed_when_changed() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tokenizers/tiny/tokenizer.json");
        let dir = std::env::temp_dir().join(format!("pgm-tok-share-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::copy(&src, &path).unwrap();
        let a = PromptTokenizer::from_file(&path).unwrap();
        let b = PromptTokenizer::from_file(&path).unwrap();
        assert!(Arc::ptr_eq(&a.inner, &b.inner), "a second load of the same file shares the tokenizer");
        let weak = Arc::downgrade(&a.inner);
        drop((a, b));
        assert!(weak.upgrade().is_none(), "the cache holds no strong reference");
        let c = PromptTokenizer::from_file(&path).unwrap();
        // A changed file (other size) is parsed again, not served from the cache.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        let d = PromptTokenizer::from_file(&path).unwrap();
        assert!(!Arc::ptr_eq(&c.inner, &d.inner));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
