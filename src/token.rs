//! The native protocol's shared secret: a random token in a file only its owner can read.
//!
//! The server writes it at start (mode 0600, directory 0700) to `--token-file` or
//! `$HOME/.bqrt/token-<port>`; a client on the same (possibly shared) filesystem finds it there
//! without flags, or takes `--token-file`, `BQRT_TOKEN_FILE` or `BQRT_TOKEN`.
//!
//! A live server holds a lock on `<token file>.lock` (which names its pid and address), so a
//! second server given the same path (or two nodes on one shared home with the same default
//! port) is refused instead of overwriting the first one's token.

use std::fs;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The lock a live server holds on its token path; released when dropped (at exit).
#[derive(Debug)]
pub struct Claim {
    _file: fs::File,
}

/// Lock `<path>.lock` for this process, writing `about` (pid and address) into it; if another
/// live process holds it, an error that says who.
pub fn claim(path: &Path, about: &str) -> Result<Claim, String> {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    if let Some(dir) = lock.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock)
        .map_err(|e| format!("cannot open the lock {}: {e}", lock.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function owns.
    let got = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if got != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(format!(
            "the token file {} is in use by a live server ({}); give this one another --token-file (or another --listen port)",
            path.display(),
            match holder.trim() {
                "" => "its lock is held".to_string(),
                h => h.to_string(),
            }
        ));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{about}");
    Ok(Claim { _file: file })
}

/// A warning if the token file can be read by other users (anyone who can read it can submit
/// work as its owner).
pub fn exposure(path: &Path) -> Option<String> {
    let mode = fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "bqrt: warning: the token file {} is readable by other users (mode {:o}): anyone who can read it can use this server as you; chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

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
