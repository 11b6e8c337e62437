//! A manager's state machine (sans-IO): schedules for a group of workers or managers.
//!
//! * Tasks from above are placed below (idle slots first, then least backlog).
//! * Tasks from below go to this group's idle workers first (local first); the rest go up.
//! * The manager reports its idle count upward whenever it changes, with the last batch it read
//!   from above as receipt.
//! * A steal request from above is passed to the loaded employees; what they hand back goes to
//!   this group's idle workers first and the rest up, answering the request once every
//!   employee asked has answered.
//! * Tasks an occupied worker hands back go to this group's idle workers, else to its workers
//!   that are not occupied, else up; the group's count of occupied workers is reported upward
//!   whenever it changes.

use super::boss::Boss;
use crate::protocol::Outbox;
use crate::protocol::{BatchSeq, Down, Msg, Rank, TaskMsg, Up};

#[derive(Debug)]
struct UpstreamSteal {
    collected: Vec<TaskMsg>,
}

#[derive(Debug)]
pub struct ManagerCore {
    rank: Rank,
    parent: Rank,
    pub(crate) boss: Boss,
    receipt: BatchSeq,
    reported_idle: u32,
    /// Occupied workers last reported upward.
    reported_occupied: u32,
    upstream: Option<UpstreamSteal>,
}

impl ManagerCore {
    pub fn new(rank: Rank, parent: Rank, employees: &[(Rank, u32)], seed: u64) -> ManagerCore {
        let boss = Boss::new(employees, seed);
        let reported_idle = boss.idle_total();
        ManagerCore {
            rank,
            parent,
            boss,
            receipt: BatchSeq(0),
            reported_idle,
            reported_occupied: 0,
            upstream: None,
        }
    }

    pub fn workers(&self) -> u32 {
        self.boss.workers_total()
    }

    pub fn handle(&mut self, from: Rank, msg: Msg, out: &mut Outbox) {
        match msg {
            Msg::Down(Down::Assign {
                seq,
                tasks,
                overflow,
            }) => {
                self.receipt = seq;
                if overflow {
                    self.boss.place_all(tasks, out);
                } else {
                    // meant for idle workers: what finds none here goes back up at once (the
                    // boss's view was older than this group's local placements), after the
                    // report that tells the boss so
                    let rest = self.boss.place_idle(tasks, out);
                    if !rest.is_empty() {
                        self.report_idle(out);
                        out.push((self.parent, Msg::Up(Up::Submit { tasks: rest })));
                    }
                }
            }
            Msg::Down(Down::Steal { max }) => {
                self.upstream = Some(UpstreamSteal {
                    collected: Vec::new(),
                });
                self.boss.plan_steals(max, out);
                self.answer_upstream(out);
            }
            Msg::Down(Down::Shutdown { .. }) => {}
            Msg::Up(up) => {
                let Some(e) = self.boss.employee(from) else {
                    log::error!(
                        "manager {}: {from} is not its employee; message dropped",
                        self.rank.0
                    );
                    return;
                };
                match up {
                    Up::Submit { tasks } => {
                        let rest = self.boss.place_idle(tasks, out);
                        if !rest.is_empty() {
                            out.push((self.parent, Msg::Up(Up::Submit { tasks: rest })));
                        }
                    }
                    Up::Waiting { idle, receipt } => self.boss.on_waiting(e, idle, receipt),
                    Up::Stolen { tasks } => {
                        self.boss.on_stolen(e, tasks.len());
                        let rest = self.boss.place_idle(tasks, out);
                        match &mut self.upstream {
                            Some(up) => up.collected.extend(rest),
                            None => self.boss.place_all(rest, out),
                        }
                        self.answer_upstream(out);
                    }
                    Up::Occupied { workers, tasks } => {
                        self.boss.on_occupied(e, workers, tasks.len());
                        let rest = self.boss.place_idle(tasks, out);
                        match &mut self.upstream {
                            Some(up) => up.collected.extend(rest),
                            None if self.boss.any_available() => self.boss.place_all(rest, out),
                            None if rest.is_empty() => {}
                            None => out.push((self.parent, Msg::Up(Up::Submit { tasks: rest }))),
                        }
                    }
                }
            }
            Msg::Peer(_) => {
                log::error!(
                    "manager {}: unexpected peer message from {from}; dropped",
                    self.rank.0
                );
            }
        }
        if self.upstream.is_none() {
            self.boss.plan_steals(self.boss.idle_total(), out);
        }
        let occupied = self.boss.occupied_total();
        if occupied != self.reported_occupied {
            self.reported_occupied = occupied;
            out.push((
                self.parent,
                Msg::Up(Up::Occupied {
                    workers: occupied,
                    tasks: Vec::new(),
                }),
            ));
        }
        self.report_idle(out);
    }

    /// Tell the boss this group's idle workers, when their number changed.
    fn report_idle(&mut self, out: &mut Outbox) {
        let idle = self.boss.idle_total();
        if idle != self.reported_idle {
            self.reported_idle = idle;
            out.push((
                self.parent,
                Msg::Up(Up::Waiting {
                    idle,
                    receipt: self.receipt,
                }),
            ));
        }
    }

    fn answer_upstream(&mut self, out: &mut Outbox) {
        if self.boss.steals_pending() == 0 {
            if let Some(up) = self.upstream.take() {
                out.push((
                    self.parent,
                    Msg::Up(Up::Stolen {
                        tasks: up.collected,
                    }),
                ));
            }
        }
    }
}
