//! Noticing a rank that died or stopped answering, so every other rank stops with an error that
//! names it.
//!
//! At start every rank learns every rank's process id. The lowest rank of each node watches the
//! other ranks of its node, and the second lowest watches the lowest (a process on the same
//! machine can be checked with `kill(pid, 0)` and `/proc`): every
//! [`WATCH_EVERY`](super::stop::WATCH_EVERY), and at once when a stop signal arrives (a
//! launcher that sees a rank die signals the others). Every rank also sends its watcher a sign
//! of life (`Peer::Alive`) every [`heartbeat`](super::stop::heartbeat) (a sixth of the stuck
//! time) from its transport thread, which runs beside any computation: a rank whose process is there but silent for the
//! stuck time (`--stuck-after`: stopped with SIGSTOP, a wedged MPI progress thread, a node
//! swapping itself to death) is reported like a dead one. A rank busy in a long task is not
//! silent. A loss is reported to the server (`Peer::Lost`), which tells its clients first, then
//! stops every remaining rank with that error. If the server itself was lost, its watcher stops
//! every rank.

use crate::protocol::Rank;
use crate::topology::Layout;
use std::time::{Duration, Instant};

/// A rank found dead or silent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    pub rank: Rank,
    pub role: &'static str,
    pub node: u32,
    /// Seconds without a sign of life, for a rank whose process is still there (0: it died).
    pub silent: u64,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (rank, role, node) = (self.rank.0, self.role, self.node);
        match self.silent {
            0 => write!(
                f,
                "rank {rank} ({role} on node {node}) was lost: its process died"
            ),
            s => write!(
                f,
                "rank {rank} ({role} on node {node}) was lost: it stopped answering (no sign of \
                 life for {s} s; stopped, or stuck outside bqrt; see --stuck-after)"
            ),
        }
    }
}

#[derive(Debug)]
struct Watched {
    rank: Rank,
    pid: i32,
    role: &'static str,
    node: u32,
    lost: bool,
    /// The last sign of life.
    heard: Instant,
}

/// The node leader's view of its node's other ranks.
#[derive(Debug)]
pub struct Watcher {
    peers: Vec<Watched>,
    stuck_after: Duration,
}

/// The ranks of `me`'s node, lowest first.
fn mates(me: Rank, lay: &Layout) -> Option<Vec<usize>> {
    let node = *lay.node_of.get(me.0 as usize)?;
    Some(
        (0..lay.roles.len())
            .filter(|&r| lay.node_of[r] == node)
            .collect(),
    )
}

/// The rank that watches `me` (where its signs of life go), if any.
pub fn watcher_of(me: Rank, lay: &Layout) -> Option<Rank> {
    let mates = mates(me, lay)?;
    let w = if mates.first() == Some(&(me.0 as usize)) {
        *mates.get(1)?
    } else {
        *mates.first()?
    };
    Some(Rank(w as u32))
}

impl Watcher {
    /// The lowest rank of a node watches the node's other ranks; the second lowest watches the
    /// lowest; other ranks watch nothing. A watched rank silent for `stuck_after` is lost.
    pub fn new(me: Rank, lay: &Layout, pids: &[i32], stuck_after: Duration) -> Option<Watcher> {
        let mates = mates(me, lay)?;
        let node = lay.node_of[me.0 as usize];
        let me = me.0 as usize;
        let watched: Vec<usize> = match mates.iter().position(|&r| r == me) {
            Some(0) => mates[1..].to_vec(),
            Some(1) => vec![mates[0]],
            _ => return None,
        };
        let now = Instant::now();
        let peers: Vec<Watched> = watched
            .into_iter()
            .filter_map(|r| {
                Some(Watched {
                    rank: Rank(r as u32),
                    pid: *pids.get(r)?,
                    role: lay.roles[r].name(),
                    node,
                    lost: false,
                    heard: now,
                })
            })
            .collect();
        (!peers.is_empty()).then_some(Watcher { peers, stuck_after })
    }

    /// The process ids of the watched ranks.
    pub fn pids(&self) -> Vec<i32> {
        self.peers.iter().map(|p| p.pid).collect()
    }

    /// A sign of life from `rank` (any message counts; the watcher hears `Peer::Alive`).
    pub fn heard(&mut self, rank: Rank) {
        if let Some(p) = self.peers.iter_mut().find(|p| p.rank == rank) {
            p.heard = Instant::now();
        }
    }

    /// Ranks found dead or silent since the last call.
    pub fn check(&mut self) -> Vec<Lost> {
        let mut found = Vec::new();
        for p in self.peers.iter_mut().filter(|p| !p.lost) {
            let silent = p.heard.elapsed();
            let dead = !alive(p.pid);
            if dead || silent >= self.stuck_after {
                p.lost = true;
                found.push(Lost {
                    rank: p.rank,
                    role: p.role,
                    node: p.node,
                    silent: if dead { 0 } else { silent.as_secs().max(1) },
                });
            }
        }
        found
    }
}

/// Watch `pids` from a thread of their own, blocked in `poll(2)` on one pidfd each (Linux 5.3 and
/// later): when one of them ends, the thread asks the transport loop for its tick (and so the
/// watcher's check; [`crate::transport::tick_now`]) and calls `wake` (the rank's doorbell
/// wakes its loop), so the
/// loss is found within a transport turn instead of up to a check period later. A loss report
/// then leaves before the launcher, which tears the job down as soon as it sees a rank die, can
/// get in its way (Open MPI's TCP transport may hang a rank that sends to a dead peer, the
/// server among them). Returns false, and watches nothing, where pidfds are not available: the
/// periodic check covers that case alone.
pub fn witness(pids: &[i32], wake: impl Fn() + Send + 'static) -> bool {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    for &pid in pids.iter().filter(|&&p| p > 0) {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        if fd < 0 {
            for f in &fds {
                // SAFETY: closing descriptors this function opened.
                unsafe { libc::close(f.fd) };
            }
            return false;
        }
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    if fds.is_empty() {
        return false;
    }
    let spawned = std::thread::Builder::new()
        .name("bqrt-witness".into())
        .spawn(move || {
            while !fds.is_empty() {
                // SAFETY: fds is a valid array of pollfd of the given length.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                if n < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return; // the periodic check goes on without us
                }
                fds.retain(|f| {
                    let ended = f.revents != 0;
                    if ended {
                        // SAFETY: this descriptor was opened above and is closed once.
                        unsafe { libc::close(f.fd) };
                    }
                    !ended
                });
                crate::transport::tick_now();
                wake();
            }
        });
    spawned.is_ok()
}

/// Signs of life to this rank's watcher, every [`heartbeat`](super::stop::heartbeat).
///
/// A watcher on another node than the server's also sends the server one sign of life at its
/// first beat: the link a loss report travels then exists before any loss. Over Open MPI's TCP
/// transport a link is connected at its first message, and a first connection attempted while
/// the launcher tears the job down (which it does as soon as a rank dies) can fail, so the
/// report never arrived and clients were told of a stop signal instead of the lost rank.
#[derive(Debug)]
pub struct Heartbeat {
    to: Option<Rank>,
    every: Duration,
    last: Instant,
    /// The server, until this rank's first beat has opened the link to it.
    open_link: Option<Rank>,
}

impl Heartbeat {
    /// Signs of life to `to` for a runtime whose stuck time is `stuck_after`.
    pub fn new(to: Option<Rank>, stuck_after: Duration) -> Heartbeat {
        Heartbeat {
            to,
            every: super::stop::heartbeat(stuck_after),
            last: Instant::now(),
            open_link: None,
        }
    }

    /// The same, for a rank that watches ranks of another node than the server's: its first
    /// beat also reaches the server (see [`Heartbeat`]).
    pub fn reporting(mut self, watches_a_remote_node: bool) -> Heartbeat {
        self.open_link = watches_a_remote_node.then_some(Rank::SERVER);
        self
    }

    /// Send a sign of life if one is due.
    pub fn beat(&mut self, out: &mut crate::protocol::Outbox) {
        if let Some(server) = self.open_link.take() {
            out.push((
                server,
                crate::protocol::Msg::Peer(crate::protocol::Peer::Alive),
            ));
        }
        if let Some(to) = self.due() {
            out.push((to, crate::protocol::Msg::Peer(crate::protocol::Peer::Alive)));
        }
    }

    /// Where a sign of life is due now, if one is.
    fn due(&mut self) -> Option<Rank> {
        let to = self.to?;
        if self.last.elapsed() < self.every {
            return None;
        }
        self.last = Instant::now();
        Some(to)
    }
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return true; // unknown: never report a rank lost on a guess
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match procfs::process::Process::new(pid).and_then(|p| p.stat()) {
        Ok(stat) => !matches!(stat.state, 'Z' | 'X'),
        Err(_) => false,
    }
}

/// Every process below `pid` (children, their children, ...), from `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = match procfs::process::all_processes() {
        Ok(procs) => procs
            .flatten()
            .filter_map(|p| p.stat().ok())
            .map(|st| (st.pid as u32, st.ppid as u32))
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &all {
            if pp == parent {
                found.push(p);
                frontier.push(p);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::layout;

    #[test]
    fn the_node_leader_watches_its_node_and_sees_a_death() {
        let lay = layout(&[0, 0, 0, 1, 1], 16).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let pids = vec![me, child.id() as i32, me, me, me];
        assert!(
            Watcher::new(Rank(2), &lay, &pids, Duration::from_secs(30)).is_none(),
            "only the two lowest ranks of a node watch"
        );
        let second = Watcher::new(Rank(1), &lay, &pids, Duration::from_secs(30)).unwrap();
        assert_eq!(
            second.peers.iter().map(|p| p.rank).collect::<Vec<_>>(),
            vec![Rank(0)],
            "the second watches the first"
        );
        let mut w = Watcher::new(Rank(0), &lay, &pids, Duration::from_secs(30)).unwrap();
        assert!(w.check().is_empty());
        child.kill().unwrap();
        let _ = child.wait();
        let lost = w.check();
        assert_eq!(
            lost,
            vec![Lost {
                rank: Rank(1),
                role: "manager",
                node: 0,
                silent: 0,
            }]
        );
        assert!(w.check().is_empty(), "reported once");
        let mut z = std::process::Command::new("true").spawn().unwrap();
        let zpid = z.id() as i32;
        // once it has exited (not reaped: a zombie) it is not alive
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alive(zpid) {
            assert!(
                std::time::Instant::now() < deadline,
                "a zombie counts as alive"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(z.try_wait().unwrap().is_some(), "it had exited");
    }

    #[test]
    fn a_witness_wakes_its_rank_as_soon_as_a_watched_process_ends() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (tx, rx) = crossbeam::channel::unbounded();
        assert!(
            witness(&[child.id() as i32], move || {
                let _ = tx.send(());
            }),
            "pidfds are available on this kernel"
        );
        assert!(rx.try_recv().is_err());
        let t0 = Instant::now();
        child.kill().unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok(), "no wake");
        assert!(crate::transport::take_tick_now());
        let _ = child.wait();
        eprintln!("witness woke {:?} after the kill", t0.elapsed());
    }

    #[test]
    fn a_watcher_of_another_node_opens_its_link_to_the_server_at_its_first_beat() {
        let alive = |to: u32| {
            (
                Rank(to),
                crate::protocol::Msg::Peer(crate::protocol::Peer::Alive),
            )
        };
        let mut remote = Heartbeat::new(Some(Rank(4)), Duration::from_secs(30)).reporting(true);
        let mut out = Vec::new();
        remote.beat(&mut out);
        assert_eq!(out, vec![alive(0)], "the first beat reaches the server");
        out.clear();
        remote.beat(&mut out);
        assert!(out.is_empty(), "once: {out:?}");
        let mut local = Heartbeat::new(Some(Rank(1)), Duration::from_secs(30)).reporting(false);
        local.beat(&mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_silent_rank_is_lost_and_a_sign_of_life_keeps_it() {
        let lay = layout(&[0, 0, 0], 16).unwrap();
        let me = std::process::id() as i32;
        let pids = vec![me, me, me];
        assert_eq!(watcher_of(Rank(2), &lay), Some(Rank(0)));
        assert_eq!(watcher_of(Rank(0), &lay), Some(Rank(1)));
        let mut w = Watcher::new(Rank(0), &lay, &pids, Duration::from_millis(300)).unwrap();
        let mut lost = Vec::new();
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            w.heard(Rank(1)); // rank 1 keeps talking, rank 2 says nothing
            lost.extend(w.check());
            std::thread::yield_now();
        }
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!((lost[0].rank, lost[0].silent), (Rank(2), 1), "{lost:?}");
        let text = Lost {
            rank: Rank(2),
            role: "worker",
            node: 0,
            silent: 30,
        }
        .to_string();
        assert!(
            text.contains("rank 2 (worker on node 0)") && text.contains("stopped answering"),
            "{text}"
        );
    }
}
