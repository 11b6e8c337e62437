//! Noticing a rank that died, so every other rank stops with an error that names it.
//!
//! At start every rank learns every rank's process id. The lowest rank of each node watches the
//! other ranks of its node, and the second lowest watches the lowest (a process on the same
//! machine can be checked with `kill(pid, 0)` and `/proc`): every
//! [`WATCH_EVERY`](super::stop::WATCH_EVERY), and at once when a stop signal arrives (a launcher that sees a rank die signals the others). A death is reported
//! to the server (`Peer::Lost`), which tells its clients first, then stops every remaining rank
//! with that error. If the server itself died, its watcher stops every rank.

use crate::protocol::Rank;
use crate::topology::Layout;

/// A rank found dead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    pub rank: Rank,
    pub role: &'static str,
    pub node: u32,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rank {} ({} on node {}) was lost: its process died",
            self.rank.0, self.role, self.node
        )
    }
}

#[derive(Debug)]
struct Watched {
    rank: Rank,
    pid: i32,
    role: &'static str,
    node: u32,
    lost: bool,
}

/// The node leader's view of its node's other ranks.
#[derive(Debug)]
pub struct Watcher {
    peers: Vec<Watched>,
}

impl Watcher {
    /// The lowest rank of a node watches the node's other ranks; the second lowest watches the
    /// lowest; other ranks watch nothing.
    pub fn new(me: Rank, lay: &Layout, pids: &[i32]) -> Option<Watcher> {
        let node = *lay.node_of.get(me.0 as usize)?;
        let mates: Vec<usize> = (0..lay.roles.len())
            .filter(|&r| lay.node_of[r] == node)
            .collect();
        let me = me.0 as usize;
        let watched: Vec<usize> = match mates.iter().position(|&r| r == me) {
            Some(0) => mates[1..].to_vec(),
            Some(1) => vec![mates[0]],
            _ => return None,
        };
        let peers: Vec<Watched> = watched
            .into_iter()
            .filter_map(|r| {
                Some(Watched {
                    rank: Rank(r as u32),
                    pid: *pids.get(r)?,
                    role: lay.roles[r].name(),
                    node,
                    lost: false,
                })
            })
            .collect();
        (!peers.is_empty()).then_some(Watcher { peers })
    }

    /// Ranks found dead since the last call.
    pub fn check(&mut self) -> Vec<Lost> {
        let mut found = Vec::new();
        for p in self.peers.iter_mut().filter(|p| !p.lost) {
            if !alive(p.pid) {
                p.lost = true;
                found.push(Lost {
                    rank: p.rank,
                    role: p.role,
                    node: p.node,
                });
            }
        }
        found
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
            Watcher::new(Rank(2), &lay, &pids).is_none(),
            "only the two lowest ranks of a node watch"
        );
        let second = Watcher::new(Rank(1), &lay, &pids).unwrap();
        assert_eq!(
            second.peers.iter().map(|p| p.rank).collect::<Vec<_>>(),
            vec![Rank(0)],
            "the second watches the first"
        );
        let mut w = Watcher::new(Rank(0), &lay, &pids).unwrap();
        assert!(w.check().is_empty());
        child.kill().unwrap();
        let _ = child.wait();
        let lost = w.check();
        assert_eq!(
            lost,
            vec![Lost {
                rank: Rank(1),
                role: "manager",
                node: 0
            }]
        );
        assert!(w.check().is_empty(), "reported once");
        let mut z = std::process::Command::new("true").spawn().unwrap();
        let zpid = z.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(100)); // exited but not reaped: a zombie
        assert!(!alive(zpid));
        let _ = z.wait();
    }
}
