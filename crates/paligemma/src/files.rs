//! Opening files whose paths come from callers (model folders, image paths, archives to
//! convert) without letting the path hang or exhaust the process.
//!
//! Two hostile cases matter on a server (docs/guarantees.md, "Input limits"):
//! - **Blocking files.** `open` on a FIFO waits for a writer and `read` on a FIFO or a terminal
//!   waits for data, so one such path used to wedge a model's worker for ever. Files are opened
//!   with `O_NONBLOCK` (which makes opening a FIFO return at once) and anything that is not a
//!   regular file is refused before a byte is read.
//! - **Endless or huge files.** A link to `/dev/zero` or a sparse 4 GiB `config.json` used to be
//!   read whole before parsing failed. Text files are read with a cap that is checked against
//!   the size first and enforced while reading.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Largest `config.json` accepted. Released configs are about 1–3 KB; a config with every
/// optional field spelled out stays far below this.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Largest `tokenizer.json` accepted. PaliGemma's is 17 MB (Gemma's 256 000 entries plus the
/// 1 024 `<loc>` and 128 `<seg>` tokens); Gemma 3's is 33 MB.
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// Largest `model.safetensors.index.json` (or other JSON side file) accepted. The 28B
/// checkpoint's index, one line per tensor, is about 100 KB.
pub const MAX_INDEX_BYTES: u64 = 16 << 20;

/// Opens `path` for reading, refusing anything that is not a regular file (FIFOs, devices,
/// sockets, folders) without ever blocking on it. Links are followed, so a link to a regular
/// file is fine and a link to `/dev/zero` is refused.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let file = open_nonblocking(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file (it is {})", kind_of(&meta.file_type())),
        ));
    }
    Ok(file)
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK only changes how FIFOs and devices open and read; on a regular file it has no
    // effect, so the descriptor is used as it is afterwards. O_NOCTTY keeps a terminal device
    // from becoming the process's controlling terminal before it is refused.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    // Windows has no FIFOs in the file system namespace; named pipes live under \\.\pipe\ and
    // are refused by the regular-file check after opening, which does not block there.
    File::open(path)
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// Reads at most `cap` bytes of a regular file into memory; a larger file is refused (by its
/// size before reading, and again while reading, in case it grows) with `too_large(size)`.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let declared = file.metadata()?.len();
    let too_large = |size: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is {size} bytes, more than the {cap}-byte limit for this file"),
        )
    };
    if declared > cap {
        return Err(too_large(declared.to_string()));
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_large(format!("over {cap}")));
    }
    Ok(bytes)
}

/// [`read_capped`] for UTF-8 text, with errors as [`Error::Io`] naming the path.
pub fn read_text_capped(path: &Path, cap: u64) -> Result<String> {
    let bytes = read_capped(path, cap).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text: {e}")),
        )
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pgm-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo failed");
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let dir = temp_dir("fifo");
        let fifo = dir.join("config.json");
        mkfifo(&fifo);
        // A blocking open would never return (no writer ever comes): run it on a thread and
        // give it far longer than it needs, so that a hang fails the test instead of stalling it.
        let (sent, received) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || sent.send(read_text_capped(&path, MAX_CONFIG_BYTES).map(|_| ())));
        let err = received.recv_timeout(Duration::from_secs(60)).expect("opening a FIFO blocked").unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        assert!(err.to_string().contains("config.json"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn devices_and_folders_are_refused() {
        let err = open_regular(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let err = open_regular(Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("folder"), "{err}");
        // A link is followed: a link to /dev/zero is a device, not a file.
        let dir = temp_dir("link");
        let link = dir.join("tokenizer.json");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let err = read_capped(&link, MAX_TOKENIZER_BYTES).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sparse_file_over_the_cap_is_refused_before_reading() {
        let dir = temp_dir("sparse");
        let path = dir.join("config.json");
        let file = File::create(&path).unwrap();
        file.set_len(4 << 30).unwrap(); // 4 GiB, sparse: no disk used
        let err = read_text_capped(&path, MAX_CONFIG_BYTES).unwrap_err();
        assert!(err.to_string().contains("4194304-byte limit"), "{err}");
        std::fs::write(&path, b"{\"a\": 1}").unwrap();
        assert_eq!(read_text_capped(&path, MAX_CONFIG_BYTES).unwrap(), "{\"a\": 1}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
