//! Roles of ranks, computed from which node each rank is on (never from hostnames).
//!
//! * Rank 0 is the server.
//! * One node: every other rank is a worker under the server (no middle hop).
//! * Several nodes: the lowest non-server rank of each node with at least two non-server ranks
//!   is that node's manager; the node's other ranks are its workers. A node with a single
//!   non-server rank contributes a lone worker.
//! * While the server would have more than `fanout` employees, groups of `fanout` consecutive
//!   employees get an upper manager. Its rank is taken from the group's first node that can spare
//!   a worker, so every manager is a rank of its own and the server's links grow with the
//!   top-level managers, not with the nodes.

use crate::protocol::Rank;
use std::fmt;

/// What a rank does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Server {
        employees: Vec<(Rank, u32)>,
    },
    Manager {
        parent: Rank,
        employees: Vec<(Rank, u32)>,
        level: u32,
    },
    Worker {
        parent: Rank,
    },
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Server { .. } => "server",
            Role::Manager { .. } => "manager",
            Role::Worker { .. } => "worker",
        }
    }
    pub fn parent(&self) -> Option<Rank> {
        match self {
            Role::Server { .. } => None,
            Role::Manager { parent, .. } | Role::Worker { parent } => Some(*parent),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every rank's role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub roles: Vec<Role>,
    /// Node index of each rank.
    pub node_of: Vec<u32>,
}

impl Layout {
    /// Which of a boss's `employees` are managers (the others are workers), in their order.
    pub fn managers(&self, employees: &[(Rank, u32)]) -> Vec<bool> {
        employees
            .iter()
            .map(|e| matches!(self.roles.get(e.0 .0 as usize), Some(Role::Manager { .. })))
            .collect()
    }
}

#[derive(Debug)]
enum Unit {
    NodeManager { rank: Rank, workers: Vec<Rank> },
    Lone { rank: Rank },
    Upper { rank: Rank, children: Vec<Unit> },
}

impl Unit {
    fn rank(&self) -> Rank {
        match self {
            Unit::NodeManager { rank, .. } | Unit::Lone { rank } | Unit::Upper { rank, .. } => {
                *rank
            }
        }
    }
    fn workers(&self) -> u32 {
        match self {
            Unit::NodeManager { workers, .. } => workers.len() as u32,
            Unit::Lone { .. } => 1,
            Unit::Upper { children, .. } => children.iter().map(Unit::workers).sum(),
        }
    }
}

/// Error for layouts that cannot run anything.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("bqrt needs at least 2 ranks (a server and a worker), got {0}; start it with mpirun -n N (N >= 2)")]
    TooFewRanks(usize),
    #[error("--fanout must be at least 2, got {0}")]
    Fanout(u32),
}

/// Compute roles. `node_of[r]` is the node of rank `r` (any ids; equal means same node).
pub fn layout(node_of: &[u32], fanout: u32) -> Result<Layout, LayoutError> {
    let n = node_of.len();
    if n < 2 {
        return Err(LayoutError::TooFewRanks(n));
    }
    if fanout < 2 {
        return Err(LayoutError::Fanout(fanout));
    }
    // nodes in order of their first rank
    let mut node_ids: Vec<u32> = Vec::new();
    let mut members: Vec<Vec<Rank>> = Vec::new();
    for (r, &nd) in node_of.iter().enumerate() {
        let idx = match node_ids.iter().position(|&x| x == nd) {
            Some(i) => i,
            None => {
                node_ids.push(nd);
                members.push(Vec::new());
                node_ids.len() - 1
            }
        };
        members[idx].push(Rank(r as u32));
    }
    let dense_node: Vec<u32> = node_of
        .iter()
        .map(|nd| node_ids.iter().position(|x| x == nd).unwrap_or(0) as u32)
        .collect();
    let mut roles: Vec<Role> = vec![
        Role::Worker {
            parent: Rank::SERVER
        };
        n
    ];
    if members.len() == 1 {
        let employees = (1..n).map(|r| (Rank(r as u32), 1)).collect();
        roles[0] = Role::Server { employees };
        return Ok(Layout {
            roles,
            node_of: dense_node,
        });
    }
    let mut units: Vec<Unit> = Vec::new();
    for m in &members {
        let pool: Vec<Rank> = m.iter().copied().filter(|&r| r != Rank::SERVER).collect();
        match pool.len() {
            0 => {}
            1 => units.push(Unit::Lone { rank: pool[0] }),
            _ => units.push(Unit::NodeManager {
                rank: pool[0],
                workers: pool[1..].to_vec(),
            }),
        }
    }
    while units.len() > fanout as usize {
        let mut next: Vec<Unit> = Vec::new();
        let mut merged = false;
        let mut rest = units.into_iter().peekable();
        while rest.peek().is_some() {
            let group: Vec<Unit> = rest.by_ref().take(fanout as usize).collect();
            if group.len() < 2 {
                next.extend(group);
                continue;
            }
            let mut group = group;
            match spare_worker(&mut group) {
                Some(rank) => {
                    next.push(Unit::Upper {
                        rank,
                        children: group,
                    });
                    merged = true;
                }
                None => next.extend(group),
            }
        }
        units = next;
        if !merged {
            break;
        }
    }
    let server_employees = units.iter().map(|u| (u.rank(), u.workers())).collect();
    roles[0] = Role::Server {
        employees: server_employees,
    };
    for u in &units {
        assign(u, Rank::SERVER, &mut roles, 1);
    }
    Ok(Layout {
        roles,
        node_of: dense_node,
    })
}

/// Take the last worker of the first node (in group order) that can spare one (keeping one).
fn spare_worker(group: &mut [Unit]) -> Option<Rank> {
    fn take(u: &mut Unit) -> Option<Rank> {
        match u {
            Unit::NodeManager { workers, .. } if workers.len() >= 2 => workers.pop(),
            Unit::NodeManager { .. } | Unit::Lone { .. } => None,
            Unit::Upper { children, .. } => children.iter_mut().find_map(take),
        }
    }
    group.iter_mut().find_map(take)
}

fn assign(u: &Unit, parent: Rank, roles: &mut [Role], level: u32) {
    match u {
        Unit::Lone { rank } => roles[rank.0 as usize] = Role::Worker { parent },
        Unit::NodeManager { rank, workers, .. } => {
            roles[rank.0 as usize] = Role::Manager {
                parent,
                employees: workers.iter().map(|&w| (w, 1)).collect(),
                level,
            };
            for &w in workers {
                roles[w.0 as usize] = Role::Worker { parent: *rank };
            }
        }
        Unit::Upper { rank, children } => {
            roles[rank.0 as usize] = Role::Manager {
                parent,
                employees: children.iter().map(|c| (c.rank(), c.workers())).collect(),
                level,
            };
            for c in children {
                assign(c, *rank, roles, level + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(per: &[usize]) -> Vec<u32> {
        per.iter()
            .enumerate()
            .flat_map(|(i, &k)| std::iter::repeat_n(i as u32, k))
            .collect()
    }

    fn check(l: &Layout) {
        // every non-server rank has exactly one boss that lists it, and worker counts add up
        let n = l.roles.len();
        let mut listed = vec![0; n];
        for role in &l.roles {
            if let Role::Server { employees } | Role::Manager { employees, .. } = role {
                for (r, _) in employees {
                    listed[r.0 as usize] += 1;
                }
            }
        }
        for (r, &times) in listed.iter().enumerate().skip(1) {
            assert_eq!(times, 1, "rank {r} listed {times} times in {l:?}");
            let p = l.roles[r].parent().unwrap();
            match &l.roles[p.0 as usize] {
                Role::Server { employees } | Role::Manager { employees, .. } => {
                    assert!(employees.iter().any(|(e, _)| e.0 as usize == r))
                }
                Role::Worker { .. } => panic!("rank {r} has a worker as boss"),
            }
        }
        let workers = l
            .roles
            .iter()
            .filter(|r| matches!(r, Role::Worker { .. }))
            .count() as u32;
        if let Role::Server { employees } = &l.roles[0] {
            assert_eq!(employees.iter().map(|e| e.1).sum::<u32>(), workers);
        }
    }

    #[test]
    fn one_node_has_no_managers() {
        let l = layout(&nodes(&[6]), 16).unwrap();
        check(&l);
        assert!(matches!(&l.roles[0], Role::Server { employees } if employees.len() == 5));
        assert!(l.roles[1..]
            .iter()
            .all(|r| *r == Role::Worker { parent: Rank(0) }));
    }

    #[test]
    fn one_manager_per_node() {
        let l = layout(&nodes(&[3, 3, 3]), 16).unwrap();
        check(&l);
        let managers: Vec<usize> = (0..9)
            .filter(|&r| matches!(l.roles[r], Role::Manager { .. }))
            .collect();
        assert_eq!(managers, vec![1, 3, 6]);
        assert_eq!(l.roles[2], Role::Worker { parent: Rank(1) });
        assert_eq!(l.roles[8], Role::Worker { parent: Rank(6) });
    }

    #[test]
    fn fanout_bounds_server_links() {
        for (nodes_n, fanout) in [(4usize, 2u32), (9, 3), (40, 4), (100, 16), (7, 2)] {
            let l = layout(&nodes(&vec![4; nodes_n]), fanout).unwrap();
            check(&l);
            let Role::Server { employees } = &l.roles[0] else {
                panic!()
            };
            assert!(
                employees.len() <= fanout as usize,
                "{nodes_n} nodes fanout {fanout}: {employees:?}"
            );
            for role in &l.roles {
                if let Role::Manager {
                    employees, level, ..
                } = role
                {
                    if *level > 0 {
                        assert!(
                            employees.len() <= fanout.max(3) as usize
                                || employees.iter().all(|e| e.1 == 1)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn too_few_ranks() {
        assert_eq!(layout(&[0], 4), Err(LayoutError::TooFewRanks(1)));
        assert_eq!(layout(&[0, 0], 1), Err(LayoutError::Fanout(1)));
    }

    #[test]
    fn lone_workers_on_thin_nodes() {
        let l = layout(&nodes(&[1, 1, 2]), 16).unwrap();
        check(&l);
        assert_eq!(l.roles[1], Role::Worker { parent: Rank(0) });
        assert_eq!(
            l.roles[2],
            Role::Manager {
                parent: Rank(0),
                employees: vec![(Rank(3), 1)],
                level: 1
            }
        );
    }
}
