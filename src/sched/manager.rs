//! A manager's state machine (sans-IO): schedules for a group of workers or managers.
//!
//! * Tasks from above are placed below (idle slots first, then least backlog).
//! * Tasks from below go to this group's idle workers first (local first); the rest go up.
//! * The manager reports its idle count upward whenever it changes, with the last batch it read
//!   from above as receipt.
//! * A steal request from above is passed to the loaded employees; what they hand back goes to
//!   this group's idle workers first and the rest up, answering the request once every
//!   employee asked has answered (requests that arrive meanwhile join it and are answered
//!   together, one answer each).
//! * Tasks an occupied worker hands back go to this group's idle workers, else to its workers
//!   that are not occupied, else up; the group's count of occupied workers is reported upward
//!   whenever it changes.

use super::boss::Boss;
use crate::protocol::Outbox;
use crate::protocol::{BatchSeq, Down, Msg, Rank, TaskMsg, Up};

/// Steal requests from above being served: the boss may ask again before the first is answered;
/// every request gets its own answer, in order, once no steal below is outstanding.
#[derive(Debug)]
struct UpstreamSteal {
    collected: Vec<TaskMsg>,
    /// Tasks asked for, over the requests owed.
    max: u32,
    owed: u32,
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
    /// This group's backlog as last reported upward.
    reported_backlog: u64,
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
            reported_backlog: 0,
            upstream: None,
        }
    }

    pub fn workers(&self) -> u32 {
        self.boss.workers_total()
    }

    pub fn handle(&mut self, from: Rank, msg: Msg, out: &mut Outbox) {
        match msg {
            // `all_occupied` is the boss's view; this group places by its own
            Msg::Down(Down::Assign {
                seq,
                tasks,
                overflow,
                ..
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
                        out.push((self.parent, self.submit(rest)));
                    }
                }
            }
            Msg::Down(Down::Steal { max }) => {
                let up = self.upstream.get_or_insert(UpstreamSteal {
                    collected: Vec::new(),
                    max: 0,
                    owed: 0,
                });
                up.max += max;
                up.owed += 1;
                let max = up.max;
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
                    Up::Submit {
                        tasks,
                        queued,
                        receipt,
                    } => {
                        self.boss.on_submit(e, queued, receipt);
                        let rest = self.boss.place_idle(tasks, out);
                        if !rest.is_empty() {
                            out.push((self.parent, self.submit(rest)));
                        }
                    }
                    Up::Waiting { idle, receipt } => self.boss.on_waiting(e, idle, receipt),
                    Up::Stolen {
                        tasks,
                        left,
                        receipt,
                    } => {
                        self.boss.on_stolen(e, left, receipt);
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
                            None => {
                                out.push((self.parent, self.submit(rest)));
                            }
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
        self.report_backlog(out);
    }

    /// Tell the boss when this group starts or stops holding queued tasks: the children a
    /// worker keeps in its own queue (decision 64) are seen above only through this count, so
    /// an idle worker of another group can steal them.
    fn report_backlog(&mut self, out: &mut Outbox) {
        let backlog = self.boss.backlog_total();
        if self.upstream.is_some() || (backlog > 0) == (self.reported_backlog > 0) {
            return;
        }
        out.push((self.parent, self.submit(Vec::new())));
    }

    /// Tasks for the boss to place, with this group's backlog (now the one last reported).
    fn submit(&mut self, tasks: Vec<TaskMsg>) -> Msg {
        self.reported_backlog = self.boss.backlog_total();
        Msg::Up(Up::Submit {
            tasks,
            queued: self.reported_backlog,
            receipt: self.receipt,
        })
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
                let left = self.boss.backlog_total();
                let mut tasks = up.collected;
                for _ in 0..up.owed {
                    let stolen = Up::Stolen {
                        tasks: std::mem::take(&mut tasks),
                        left,
                        receipt: self.receipt,
                    };
                    out.push((self.parent, Msg::Up(stolen)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::boss::tests::tasks;

    fn stolen(out: &Outbox) -> Vec<usize> {
        out.iter()
            .filter_map(|(to, m)| match m {
                Msg::Up(Up::Stolen { tasks, .. }) if *to == Rank::SERVER => Some(tasks.len()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_queue_a_worker_keeps_is_reported_above_while_the_group_is_busy() {
        let mut m = ManagerCore::new(Rank(1), Rank::SERVER, &[(Rank(2), 1)], 4);
        let mut out = Outbox::new();
        let assign = Down::Assign {
            seq: BatchSeq(1),
            tasks: tasks(1),
            overflow: false,
            all_occupied: false,
        };
        m.handle(Rank::SERVER, Msg::Down(assign), &mut out); // its one worker is busy
        out.clear();
        // the worker keeps 2 children in its queue (a local submit) and says so
        let kept = Up::Submit {
            tasks: Vec::new(),
            queued: 2,
            receipt: BatchSeq(1),
        };
        m.handle(Rank(2), Msg::Up(kept), &mut out);
        let above: Vec<u64> = out
            .iter()
            .filter_map(|(to, m)| match m {
                Msg::Up(Up::Submit { queued, .. }) if *to == Rank::SERVER => Some(*queued),
                _ => None,
            })
            .collect();
        assert_eq!(above, vec![2], "the server must hear of it: {out:?}");
        // it drains: the server hears that too, once
        out.clear();
        let drained = Up::Submit {
            tasks: Vec::new(),
            queued: 0,
            receipt: BatchSeq(1),
        };
        m.handle(Rank(2), Msg::Up(drained), &mut out);
        m.handle(
            Rank(2),
            Msg::Up(Up::Waiting {
                idle: 0,
                receipt: BatchSeq(1),
            }),
            &mut out,
        );
        let zeros = out
            .iter()
            .filter(|(to, m)| {
                *to == Rank::SERVER && matches!(m, Msg::Up(Up::Submit { queued: 0, .. }))
            })
            .count();
        assert_eq!(zeros, 1, "{out:?}");
    }

    #[test]
    fn every_steal_from_above_gets_its_own_answer() {
        let mut m = ManagerCore::new(Rank(1), Rank::SERVER, &[(Rank(2), 1), (Rank(3), 1)], 4);
        let mut out = Outbox::new();
        let assign = Down::Assign {
            seq: BatchSeq(1),
            tasks: tasks(6),
            overflow: true,
            all_occupied: false,
        };
        m.handle(Rank::SERVER, Msg::Down(assign), &mut out); // 2 run, 4 queued below
        out.clear();
        // the server asks twice before the first answer
        m.handle(Rank::SERVER, Msg::Down(Down::Steal { max: 1 }), &mut out);
        m.handle(Rank::SERVER, Msg::Down(Down::Steal { max: 2 }), &mut out);
        assert!(
            stolen(&out).is_empty(),
            "answered before its workers did: {out:?}"
        );
        let asked: Vec<(Rank, u32)> = out
            .iter()
            .filter_map(|(to, m)| match m {
                Msg::Down(Down::Steal { max }) => Some((*to, *max)),
                _ => None,
            })
            .collect();
        // 3 for the server, and a spare request to the other worker (its estimate may be stale)
        let total: u32 = asked.iter().map(|a| a.1).sum();
        assert_eq!(total, 4, "{asked:?}");
        out.clear();
        for (worker, max) in asked {
            let answer = Up::Stolen {
                tasks: tasks(max as usize),
                left: 0,
                receipt: BatchSeq(1),
            };
            m.handle(worker, Msg::Up(answer), &mut out);
        }
        // one answer per request, in order: the tasks ride on the first
        assert_eq!(stolen(&out), vec![total as usize, 0], "{out:?}");
    }
}
