//! The native protocol's shared secret: a random token in a file only its owner can read.
//!
//! The server writes it at start (mode 0600, directory 0700) to `--token-file` or
//! `$HOME/.bqrt/token-<port>`; a client on the same (possibly shared) filesystem finds it there
//! without flags, or takes `--token-file`, `BQRT_TOKEN_FILE` or `BQRT_TOKEN`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// 32 random bytes from the kernel, hex encoded.
pub fn generate() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Where a server on `port` keeps its token by default.
pub fn default_path(port: u16) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".bqrt").join(format!("token-{port}")))
}

/// Write the token atomically with mode 0600 (a temporary file renamed into place; on any
/// error the temporary file is removed).
pub fn write(path: &Path, token: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    write_atomic(path, &format!("{token}\n"))
}

/// Read a token file.
pub fn read(path: &Path) -> std::io::Result<String> {
    Ok(fs::read_to_string(path)?.trim().to_string())
}

/// Write `contents` to `path` atomically, mode 0600 (a temporary file in the same directory,
/// synced, then renamed into place; on any error the temporary file is removed).
pub fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".bqrt-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(contents.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}
