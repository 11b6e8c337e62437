//! A connection thread's bell: the hub rings it after queueing a reply, so a thread that waits
//! on its client's socket also wakes for its replies (one thread per connection, which reads
//! a frame only when it is ready for it).
//!
//! The bell is a socket pair: a ring writes a byte (only the first ring since the thread last
//! cleared it), and the thread waits with `poll` on the client's socket and the bell at once.
//! The thread clears the bell *before* it takes the queued replies, so a reply queued after it
//! looked rings again and none is left waiting.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Bell {
    rx: UnixStream,
    tx: UnixStream,
    /// Rung since the thread last cleared it: further rings write nothing.
    rung: AtomicBool,
}

/// What ended a [`Bell::wait`].
#[derive(Debug)]
pub enum Wake {
    /// The client's socket has bytes (or was closed).
    Socket,
    /// The bell rang: replies are queued.
    Bell,
    Timeout,
    /// `poll` failed (not a signal): the connection cannot be served.
    Failed(io::Error),
}

impl Bell {
    pub fn new() -> io::Result<Bell> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(Bell {
            rx,
            tx,
            rung: AtomicBool::new(false),
        })
    }

    /// A reply was queued for the thread.
    pub fn ring(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            match (&self.tx).write(&[1]) {
                // a full pair already holds a ring: nothing is lost
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // not rung after all: the next reply tries again
                Err(_) => self.rung.store(false, Ordering::SeqCst),
            }
        }
    }

    /// Forget the rings so far; call before taking the queued replies.
    pub fn clear(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.rx).read(&mut buf), Ok(n) if n > 0) {}
        self.rung.store(false, Ordering::SeqCst);
    }

    /// Wait until `socket` is readable, the bell rings, or `timeout` passed. The socket is
    /// reported first when both are ready (a client's request goes before its replies' turn).
    pub fn wait(&self, socket: &TcpStream, timeout: Duration) -> Wake {
        let mut fds = [
            libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // rounded up: a wait of less than a millisecond must not become a poll that spins
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: two valid pollfd entries that outlive the call, and their count.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                // a signal: the caller looks again
                io::ErrorKind::Interrupted => Wake::Timeout,
                _ => Wake::Failed(e),
            };
        }
        if fds[0].revents != 0 {
            Wake::Socket
        } else if fds[1].revents != 0 {
            Wake::Bell
        } else {
            Wake::Timeout
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_ring_after_a_clear_wakes_and_the_socket_goes_first() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let bell = Bell::new().unwrap();
        assert!(matches!(bell.wait(&server, Duration::ZERO), Wake::Timeout));
        bell.ring();
        bell.ring();
        assert!(matches!(bell.wait(&server, Duration::ZERO), Wake::Bell));
        bell.clear();
        assert!(matches!(bell.wait(&server, Duration::ZERO), Wake::Timeout));
        // rung before the clear, then again after it: the second ring is heard
        bell.ring();
        bell.clear();
        bell.ring();
        assert!(matches!(bell.wait(&server, Duration::ZERO), Wake::Bell));
        // the socket readable (waited for with the bell quiet), then the bell rung as well
        bell.clear();
        client.write_all(b"x").unwrap();
        assert!(matches!(
            bell.wait(&server, Duration::from_secs(20)),
            Wake::Socket
        ));
        bell.ring();
        assert!(matches!(bell.wait(&server, Duration::ZERO), Wake::Socket));
    }

    #[test]
    fn rings_from_another_thread_are_never_lost() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let bell = std::sync::Arc::new(Bell::new().unwrap());
        let (tx, rx) = crossbeam::channel::unbounded::<u32>();
        let ringer = {
            let bell = std::sync::Arc::clone(&bell);
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    tx.send(i).unwrap();
                    bell.ring();
                }
            })
        };
        // the session's order: clear, take what is queued, wait; every item must be taken
        // without a wait running into its (long) timeout
        let mut got = 0;
        while got < 20_000 {
            bell.clear();
            while rx.try_recv().is_ok() {
                got += 1;
            }
            if got < 20_000 {
                let w = bell.wait(&server, Duration::from_secs(30));
                assert!(
                    matches!(w, Wake::Bell),
                    "a ring was lost after {got} items: {w:?}"
                );
            }
        }
        ringer.join().unwrap();
    }
}
