//! The token table a worker rank shares with its Python process (decision 67).
//!
//! A BQSKit task's children wait in the worker's queue, where idle workers steal them, and the
//! task takes them back to run them inside its own step. Each child the process submits may
//! carry a token: one `pthread_spinlock_t` in memory both processes map, taken once, by
//! whichever side gets it first, with `pthread_spin_trylock` on both sides (so neither depends
//! on how the C library lays the lock out). The process takes a child back by its token without
//! a message and without waiting for the rank; the rank takes the token before it runs, hands
//! over or sends away a child that has one ([`crate::sched::Tokens`]).
//!
//! Layout: [`TOKENS`] locks, then one byte per token that the rank sets once it holds no more
//! reference to that token. The process hands out tokens, sets each free before it submits a
//! child with it, and reuses one only after the rank set its byte (python/bqrt_child.py).

use crate::sched::Tokens;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

/// Tokens in one table: children queued at once with one (more go without: claimed by message).
pub const TOKENS: u32 = 16384;
const LOCK: usize = std::mem::size_of::<libc::pthread_spinlock_t>();

/// The mapped table; the process maps the same memory from the descriptor it inherits.
#[derive(Debug)]
pub struct SharedTokens {
    base: *mut u8,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the table is plain shared memory; every access goes through atomic operations
// (the C library's spin lock, atomic bytes), and the mapping lives as long as the value.
unsafe impl Send for SharedTokens {}
// SAFETY: as above
unsafe impl Sync for SharedTokens {}

impl SharedTokens {
    /// A new table in anonymous shared memory, every lock free.
    pub fn new() -> io::Result<SharedTokens> {
        let len = TOKENS as usize * (LOCK + 1);
        // SAFETY: the name is a NUL-terminated literal
        let fd = unsafe { libc::memfd_create(c"bqrt-tokens".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor owned by nobody else
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: resizing our own new file
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of the whole file, checked below
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let t = SharedTokens {
            base: base.cast(),
            len,
            fd,
        };
        for i in 0..TOKENS {
            // SAFETY: i is in range; the lock is in our mapping and aligned (4-byte stride)
            unsafe { libc::pthread_spin_init(t.lock(i), libc::PTHREAD_PROCESS_SHARED) };
        }
        Ok(t)
    }

    /// The descriptor the process maps.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn lock(&self, i: u32) -> *mut libc::pthread_spinlock_t {
        debug_assert!(i < TOKENS);
        // SAFETY: callers pass i < TOKENS (checked where the process's frames are read)
        unsafe { self.base.add(i as usize * LOCK).cast() }
    }

    fn released(&self, i: u32) -> &AtomicU8 {
        // SAFETY: i < TOKENS; the byte is in our mapping, and only ever accessed atomically here
        unsafe { AtomicU8::from_ptr(self.base.add(TOKENS as usize * LOCK + i as usize)) }
    }
}

impl Tokens for SharedTokens {
    fn take(&self, index: u32) -> bool {
        // SAFETY: a lock in our mapping; trylock never blocks
        unsafe { libc::pthread_spin_trylock(self.lock(index)) == 0 }
    }

    fn release(&self, index: u32) {
        self.released(index).store(1, Ordering::Release);
    }
}

impl Drop for SharedTokens {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no reference into it outlives self
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_taken_once() {
        let t = SharedTokens::new().unwrap();
        assert!(t.take(7));
        assert!(!t.take(7), "taken already");
        assert!(t.take(8));
        assert!(t.take(TOKENS - 1));
        t.release(7);
        assert_eq!(t.released(7).load(Ordering::Acquire), 1);
        assert_eq!(t.released(8).load(Ordering::Acquire), 0);
    }
}
