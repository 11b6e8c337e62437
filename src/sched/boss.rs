//! Placement and idle accounting for one boss (the server or a manager) over its employees.
//!
//! # Idle accounting with read receipts
//! Every `Assign` to an employee carries a per-link sequence number. An employee reports
//! `Waiting { idle, receipt }`, where `receipt` is the last batch it has read. Batches sent after
//! the receipt are still in flight (or unread), so the boss counts
//! `idle = reported - tasks in those batches`. This relies on FIFO delivery per link, which MPI
//! guarantees per (source, tag, communicator). Employees never say "busy": the boss decrements
//! idle counts when it assigns.
//!
//! # Placement
//! Tasks fill idle worker slots first, the employee idle longest first (ties shuffled by the
//! seeded generator), so no worker stays idle while newer idle ones get work; the rest go
//! one at a time to the employee with the smallest backlog per available worker, where a worker
//! inside a long task (**occupied**, reported with `Occupied`) is not available: work is queued
//! behind a worker that is computing only when every worker is. An occupied worker hands back
//! what it had queued, and whatever reaches it while it stays occupied, except batches the boss
//! marked `all_occupied` (placed while every worker was): those it keeps, or they would go round
//! between occupied workers until one is free. A worker starts the last task of a batch and
//! delays the rest, LIFO.
//!
//! # Resources
//! An employee's workers fall into *classes*, the resource masks they offer with how many
//! workers offer each (`set_classes`; a worker has one class). A task that needs resources
//! (`TaskMsg::needs != 0`) takes an idle slot only of an employee all of whose workers can run
//! it (for a worker: it offers them), and otherwise goes to the eligible employee with the least
//! backlog per eligible worker. Tasks that need nothing fill any idle slot, but their overflow
//! goes to employees with workers that offer nothing, while such workers are available: the
//! queues of resource workers stay short, so what needs them never waits behind work any worker
//! could do (decision 47). Steals move only tasks that need nothing (a worker hands back no
//! other), so a task is never moved to a worker that cannot run it.
//!
//! # Stealing
//! `backlog` estimates the tasks an employee holds beyond its idle capacity (overflow it was
//! assigned since it last reported an idle worker). When this boss has idle workers and nothing to
//! place, it asks the employees with the largest backlog not yet asked for to hand back delayed
//! tasks (`Steal { max }`), as many tasks in total as there are idle workers, and up to
//! [`SPARE_VICTIMS`] other loaded employees for one task each (a *spare* request: estimates are
//! upper bounds, and a victim may have drained unseen); an employee may be asked again before
//! it answered, so one long queue feeds several idle workers at once.
//! Each answer (`Stolen`) says how many delayed tasks the employee still holds, which makes the
//! estimate exact again. Handed-back tasks (`Stolen`) are placed like any other. A task is
//! always in exactly one place (a queue or a message), so stealing never loses or duplicates one.

use super::idmap::IdMap;
use super::rng::Rng;
use crate::protocol::{BatchSeq, Down, Msg, Outbox, Rank, TaskMsg};
use std::collections::VecDeque;

/// Victims asked for one task each beyond the idle workers' requests, when the estimates
/// name more loaded employees than that (measured: decision 36).
const SPARE_VICTIMS: usize = 5;

#[derive(Debug)]
pub(crate) struct Employee {
    pub(crate) rank: Rank,
    /// Workers under this employee (1 for a worker).
    pub(crate) workers: u32,
    /// A manager (of one worker or more), not a worker: what it was given beyond its idle
    /// workers it keeps while they are busy, so neither its idle nor its occupied reports say
    /// that its queue drained.
    manager: bool,
    /// Believed idle workers.
    pub(crate) idle: u32,
    /// When (in this boss's count of idle reports) this employee last went from no idle worker
    /// to some: idle slots are filled longest-idle first.
    idle_since: u64,
    /// Batches sent and not yet covered by a receipt: `(seq, tasks, overflow)`.
    unreceipted: VecDeque<(BatchSeq, u32, bool)>,
    next_seq: u64,
    /// Estimated delayed tasks held (overflow since the last idle report).
    pub(crate) backlog: u64,
    /// Outstanding steal requests, oldest first (answers come back in order): their size and
    /// whether it was a spare request; and the sum of their sizes.
    steals: VecDeque<(u32, bool)>,
    asked: u64,
    /// Workers under this employee inside a long task (they take no new work).
    pub(crate) occupied: u32,
    /// Tasks ever assigned (statistics).
    pub(crate) assigned: u64,
    /// Resource masks its workers offer, with how many workers offer each.
    classes: Vec<(u64, u32)>,
    /// Its workers that offer nothing.
    plain: u32,
}

impl Employee {
    /// Workers under this employee that can run a task needing `needs`.
    fn eligible(&self, needs: u64) -> u32 {
        self.classes
            .iter()
            .filter(|&&(m, _)| m & needs == needs)
            .map(|&(_, n)| n)
            .sum()
    }
    /// Whether every worker under it can run such a task (so an idle slot is one for it).
    fn covers(&self, needs: u64) -> bool {
        self.classes.iter().all(|&(m, _)| m & needs == needs)
    }
}

#[derive(Debug)]
pub(crate) struct Boss {
    pub(crate) employees: Vec<Employee>,
    index: IdMap<Rank, usize>,
    /// Placement tie-breaks, reproducible from the seed.
    rng: Rng,
    /// Sum of `idle` over employees, kept up to date (a boss answers every message, so nothing
    /// per message may scan all employees: a server can have thousands).
    idle_sum: u32,
    /// Employees with `backlog > 0`, and the sum of their backlogs.
    backlogged: usize,
    backlog_sum: u64,
    /// Sum of `occupied` over employees, and of `workers` (fixed), kept like `idle_sum`.
    occupied_sum: u32,
    workers_sum: u32,
    /// Sum of outstanding steal requests for idle workers, how many requests there are in all,
    /// and how many of them are spare.
    requested: u32,
    requests: usize,
    spares: usize,
    /// Idle reports that raised an employee from no idle worker to some (orders `idle_since`).
    idle_reports: u64,
    /// Some worker offers resources (`set_classes`).
    resourced: bool,
}

impl Boss {
    /// `employees`: `(rank, workers under it)`.
    pub(crate) fn new(employees: &[(Rank, u32)], seed: u64) -> Boss {
        let employees: Vec<Employee> = employees
            .iter()
            .map(|&(rank, workers)| Employee {
                rank,
                workers,
                manager: false,
                idle: workers,
                idle_since: 0,
                unreceipted: VecDeque::new(),
                next_seq: 0,
                backlog: 0,
                steals: VecDeque::new(),
                asked: 0,
                occupied: 0,
                assigned: 0,
                classes: vec![(0, workers)],
                plain: workers,
            })
            .collect();
        let index = employees
            .iter()
            .enumerate()
            .map(|(i, e)| (e.rank, i))
            .collect();
        let idle_sum = employees.iter().map(|e| e.idle).sum();
        let workers_sum = employees.iter().map(|e| e.workers).sum();
        Boss {
            employees,
            index,
            rng: Rng::new(seed),
            idle_sum,
            backlogged: 0,
            backlog_sum: 0,
            occupied_sum: 0,
            workers_sum,
            requested: 0,
            requests: 0,
            spares: 0,
            idle_reports: 0,
            resourced: false,
        }
    }

    /// The resource classes of each employee, in the order of [`Boss::new`]'s list: `(mask,
    /// workers offering it)`, adding up to its workers.
    pub(crate) fn set_classes(&mut self, classes: Vec<Vec<(u64, u32)>>) {
        for (e, c) in self.employees.iter_mut().zip(classes) {
            debug_assert_eq!(c.iter().map(|x| x.1).sum::<u32>(), e.workers);
            e.plain = c.iter().filter(|x| x.0 == 0).map(|x| x.1).sum();
            e.classes = c;
        }
        self.resourced = self.employees.iter().any(|e| e.plain < e.workers);
    }

    /// Which employees are managers, in the order of [`Boss::new`]'s list (the others are
    /// workers; a manager may have one worker, like a worker).
    pub(crate) fn set_managers(&mut self, managers: &[bool]) {
        for (e, &m) in self.employees.iter_mut().zip(managers) {
            e.manager = m;
        }
    }

    pub(crate) fn employee(&self, rank: Rank) -> Option<usize> {
        self.index.get(&rank).copied()
    }

    pub(crate) fn idle_total(&self) -> u32 {
        debug_assert_eq!(
            self.idle_sum,
            self.employees.iter().map(|e| e.idle).sum::<u32>()
        );
        self.idle_sum
    }

    fn set_idle(&mut self, e: usize, idle: u32) {
        self.idle_sum = self.idle_sum - self.employees[e].idle + idle;
        self.employees[e].idle = idle;
    }

    fn set_backlog(&mut self, e: usize, backlog: u64) {
        let was = self.employees[e].backlog > 0;
        self.backlog_sum = self.backlog_sum - self.employees[e].backlog + backlog;
        self.employees[e].backlog = backlog;
        match (was, backlog > 0) {
            (false, true) => self.backlogged += 1,
            (true, false) => self.backlogged -= 1,
            _ => {}
        }
    }

    /// Tasks this boss has placed so far.
    pub(crate) fn placed_total(&self) -> u64 {
        self.employees.iter().map(|e| e.assigned).sum()
    }

    pub(crate) fn workers_total(&self) -> u32 {
        self.workers_sum
    }

    /// Workers under this boss inside a long task.
    pub(crate) fn occupied_total(&self) -> u32 {
        debug_assert_eq!(
            self.occupied_sum,
            self.employees.iter().map(|e| e.occupied).sum::<u32>()
        );
        self.occupied_sum
    }

    fn set_occupied(&mut self, e: usize, occupied: u32) {
        let occupied = occupied.min(self.employees[e].workers);
        self.occupied_sum = self.occupied_sum - self.employees[e].occupied + occupied;
        self.employees[e].occupied = occupied;
    }

    /// An employee's `Waiting` report.
    pub(crate) fn on_waiting(&mut self, e: usize, idle: u32, receipt: BatchSeq) {
        let emp = &mut self.employees[e];
        while emp
            .unreceipted
            .front()
            .is_some_and(|&(seq, _, _)| seq <= receipt)
        {
            emp.unreceipted.pop_front();
        }
        let unaccounted: u64 = emp.unreceipted.iter().map(|&(_, n, _)| u64::from(n)).sum();
        let new_idle = (u64::from(idle.min(emp.workers))).saturating_sub(unaccounted) as u32;
        let worker = !emp.manager;
        if worker && idle > 0 {
            self.set_occupied(e, 0); // a worker that waits for work is not inside a task
        }
        // a worker reports when it is idle and when its queue drains: either way, once it read
        // every batch, it holds no delayed task
        let drained = idle > 0 || worker;
        if self.employees[e].idle == 0 && new_idle > 0 {
            self.idle_reports += 1;
            self.employees[e].idle_since = self.idle_reports;
        }
        self.set_idle(e, new_idle);
        if drained {
            self.on_queued(e, 0, receipt);
        }
    }

    /// Overflow tasks sent to employee `e` in batches after `receipt` (not yet read when it
    /// last spoke).
    fn overflow_after(&self, e: usize, receipt: BatchSeq) -> u64 {
        self.employees[e]
            .unreceipted
            .iter()
            .filter(|&&(seq, _, overflow)| overflow && seq > receipt)
            .map(|&(_, n, _)| u64::from(n))
            .sum()
    }

    /// An employee's `Occupied` report: `workers` of its workers are inside a long task, and it
    /// handed back `returned` queued tasks.
    pub(crate) fn on_occupied(&mut self, e: usize, workers: u32, returned: usize) {
        self.set_occupied(e, workers);
        let emp = &self.employees[e];
        let backlog = match !emp.manager && workers > 0 {
            // an occupied worker hands back all it holds, and all that reaches it
            true => 0,
            false => emp.backlog.saturating_sub(returned as u64),
        };
        self.set_backlog(e, backlog);
    }

    /// Whether some employee has a worker that is not occupied.
    pub(crate) fn any_available(&self) -> bool {
        self.occupied_total() < self.workers_sum
    }

    /// Place tasks on idle slots only; returns what did not fit.
    pub(crate) fn place_idle(&mut self, tasks: Vec<TaskMsg>, out: &mut Outbox) -> Vec<TaskMsg> {
        if !self.resourced || tasks.iter().all(|t| t.needs == 0) {
            return self.place_idle_free(tasks, out);
        }
        let (bound, free): (Vec<TaskMsg>, Vec<TaskMsg>) =
            tasks.into_iter().partition(|t| t.needs != 0);
        let mut rest = self.place_idle_free(free, out);
        rest.extend(self.place_idle_bound(bound, out));
        rest
    }

    /// Tasks that need resources, on idle slots of employees whose workers all offer them
    /// (longest idle first); returns the others.
    fn place_idle_bound(&mut self, tasks: Vec<TaskMsg>, out: &mut Outbox) -> Vec<TaskMsg> {
        if self.idle_sum == 0 {
            return tasks;
        }
        let m = self.employees.len();
        let mut idle: Vec<u32> = self.employees.iter().map(|e| e.idle).collect();
        let mut per: Vec<Vec<TaskMsg>> = (0..m).map(|_| Vec::new()).collect();
        let mut rest = Vec::new();
        for t in tasks {
            let best = (0..m)
                .filter(|&i| idle[i] > 0 && self.employees[i].covers(t.needs))
                .min_by_key(|&i| self.employees[i].idle_since);
            match best {
                Some(i) => {
                    idle[i] -= 1;
                    per[i].push(t);
                }
                None => rest.push(t),
            }
        }
        self.send_batches(per, false, false, out);
        rest
    }

    /// Tasks that need nothing, on any idle slot.
    fn place_idle_free(&mut self, mut tasks: Vec<TaskMsg>, out: &mut Outbox) -> Vec<TaskMsg> {
        if self.idle_sum == 0 || tasks.is_empty() {
            return tasks;
        }
        let mut slots: Vec<usize> = Vec::new();
        for (i, e) in self.employees.iter().enumerate() {
            slots.extend(std::iter::repeat_n(i, e.idle as usize));
        }
        // longest idle first; ties in random order
        self.rng.shuffle(&mut slots);
        slots.sort_by_key(|&i| self.employees[i].idle_since);
        let n = slots.len().min(tasks.len());
        let rest = tasks.split_off(n);
        let mut per: Vec<Vec<TaskMsg>> = (0..self.employees.len()).map(|_| Vec::new()).collect();
        for (slot, task) in slots.into_iter().zip(tasks) {
            per[slot].push(task);
        }
        self.send_batches(per, false, false, out);
        rest
    }

    /// Place a job's first task: on the employee that became idle last (its worker's process
    /// and caches are warm, and a client's stream of small jobs stays on one worker while the
    /// others keep serving steals), or as [`place_all`](Self::place_all) when none is idle or
    /// the task needs resources.
    pub(crate) fn place_root(&mut self, task: TaskMsg, out: &mut Outbox) {
        let latest = (0..self.employees.len())
            .filter(|&i| self.employees[i].idle > 0)
            .max_by_key(|&i| self.employees[i].idle_since);
        match latest {
            Some(i) if task.needs == 0 || !self.resourced => {
                let mut per: Vec<Vec<TaskMsg>> =
                    (0..self.employees.len()).map(|_| Vec::new()).collect();
                per[i].push(task);
                self.send_batches(per, false, false, out);
            }
            _ => self.place_all(vec![task], out),
        }
    }

    /// Place every task: idle slots first, then the least backlog per worker.
    pub(crate) fn place_all(&mut self, tasks: Vec<TaskMsg>, out: &mut Outbox) {
        let rest = self.place_idle(tasks, out);
        if rest.is_empty() {
            return;
        }
        let m = self.employees.len();
        let mut per: Vec<Vec<TaskMsg>> = (0..m).map(|_| Vec::new()).collect();
        let mut load: Vec<u64> = self.employees.iter().map(|e| e.backlog).collect();
        // workers that can take work: those not occupied, unless every one is
        let all_occupied = !self.any_available();
        let mut avail: Vec<u64> = self
            .employees
            .iter()
            .map(|e| match all_occupied {
                true => u64::from(e.workers),
                false => u64::from(e.workers - e.occupied),
            })
            .collect();
        let (bound, rest): (Vec<TaskMsg>, Vec<TaskMsg>) = match self.resourced {
            true => rest.into_iter().partition(|t| t.needs != 0),
            false => (Vec::new(), rest),
        };
        if self.resourced {
            // overflow that needs nothing goes where workers offer nothing, while any is
            // available
            let plain: Vec<u64> = self
                .employees
                .iter()
                .zip(&avail)
                .map(|(e, &a)| a.min(u64::from(e.plain)))
                .collect();
            if plain.iter().any(|&a| a > 0) {
                avail = plain;
            }
        }
        let start = self.rng.below(m);
        for task in bound {
            // least backlog per eligible worker: (employee, its eligible workers)
            let mut best: Option<(usize, u64)> = None;
            for k in 0..m {
                let i = (start + k) % m;
                let el = u64::from(self.employees[i].eligible(task.needs));
                if el > 0 && best.is_none_or(|(b, eb)| load[i] * eb < load[b] * el) {
                    best = Some((i, el));
                }
            }
            let Some((best, _)) = best else {
                log::error!(
                    "a task needing resources {:#x} reached a boss none of whose workers offers them (a runtime bug); placed as if it needed none",
                    task.needs
                );
                load[start] += 1;
                per[start].push(task);
                continue;
            };
            load[best] += 1;
            per[best].push(task);
        }
        for task in rest {
            // least backlog per available worker; ties broken by a rotating random start
            let mut best = (0..m)
                .map(|k| (start + k) % m)
                .find(|&i| avail[i] > 0)
                .unwrap_or(start);
            for k in 0..m {
                let i = (start + k) % m;
                if avail[i] > 0 && load[i] * avail[best] < load[best] * avail[i] {
                    best = i;
                }
            }
            load[best] += 1;
            per[best].push(task);
        }
        for (i, batch) in per.iter().enumerate() {
            // everything beyond the idle slots (already used above) is overflow
            let b = self.employees[i].backlog + batch.len() as u64;
            self.set_backlog(i, b);
        }
        self.send_batches(per, true, all_occupied, out);
    }

    fn send_batches(
        &mut self,
        per: Vec<Vec<TaskMsg>>,
        overflow: bool,
        all_occupied: bool,
        out: &mut Outbox,
    ) {
        for (i, batch) in per.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let k = batch.len() as u32;
            let idle = self.employees[i].idle.saturating_sub(k);
            self.set_idle(i, idle);
            let emp = &mut self.employees[i];
            emp.next_seq += 1;
            let seq = BatchSeq(emp.next_seq);
            emp.unreceipted.push_back((seq, k, overflow));
            emp.assigned += u64::from(k);
            let assign = Down::Assign {
                seq,
                tasks: batch,
                overflow,
                all_occupied,
            };
            out.push((emp.rank, Msg::Down(assign)));
        }
    }

    /// Ask loaded employees for up to `capacity` delayed tasks in total, counting requests
    /// already outstanding (`capacity` is this boss's idle workers, or an upstream request).
    /// The largest backlog not yet asked for goes first, and an employee already asked may be
    /// asked again for more, so a long queue serves several idle workers in the same round.
    /// Then up to [`SPARE_VICTIMS`] spare requests (at most that many outstanding) go to loaded
    /// employees not asked yet, one task each; they do not count against `capacity`.
    pub(crate) fn plan_steals(&mut self, capacity: u32, out: &mut Outbox) {
        let mut budget = capacity.saturating_sub(self.requested);
        if budget == 0 || self.backlogged == 0 {
            return;
        }
        let mut victims: Vec<(u64, usize)> = self
            .employees
            .iter()
            .enumerate()
            .filter(|(_, e)| e.backlog > e.asked && e.idle == 0)
            .map(|(i, e)| (e.backlog - e.asked, i))
            .collect();
        victims.sort_by_key(|&(left, i)| (std::cmp::Reverse(left), i));
        let mut victims = victims.into_iter();
        for (left, i) in victims.by_ref() {
            let want = left.div_ceil(2).min(u64::from(budget)).max(1) as u32;
            self.ask(i, want, false, out);
            budget -= want;
            if budget == 0 {
                break;
            }
        }
        // estimates are upper bounds (a victim starts queued tasks between its reports), so
        // some victims asked come back empty: a few more, not yet asked, for one task each,
        // cover that in the same round; what they send beyond the idle workers is placed like
        // any other task (decision 36)
        let spare: Vec<usize> = victims
            .filter(|&(_, i)| self.employees[i].asked == 0)
            .map(|(_, i)| i)
            .take(SPARE_VICTIMS - self.spares)
            .collect();
        for i in spare {
            self.ask(i, 1, true, out);
        }
    }

    fn ask(&mut self, i: usize, want: u32, spare: bool, out: &mut Outbox) {
        let e = &mut self.employees[i];
        e.steals.push_back((want, spare));
        e.asked += u64::from(want);
        match spare {
            true => self.spares += 1,
            false => self.requested += want,
        }
        self.requests += 1;
        out.push((e.rank, Msg::Down(Down::Steal { max: want })));
    }

    /// Answer to a steal request from employee `e`, which had read every batch up to
    /// `receipt` and still holds `left` delayed tasks: its backlog is `left` and the overflow
    /// sent after that batch.
    pub(crate) fn on_stolen(&mut self, e: usize, left: u64, receipt: BatchSeq) {
        let Some((asked, spare)) = self.employees[e].steals.pop_front() else {
            return; // not asked (a late answer)
        };
        self.employees[e].asked -= u64::from(asked);
        match spare {
            true => self.spares -= 1,
            false => self.requested -= asked,
        }
        self.requests -= 1;
        self.on_queued(e, left, receipt);
    }

    /// Employee `e` submits (children it sends up, or none, with the length of its queue). A
    /// worker submits only from inside a task, so it is not idle, whatever it said last: a task
    /// of its own resumed there (its children's results came, not a batch from here) since it
    /// reported idle. Counted idle, it would be asked for no steal, so the queue it now holds
    /// would wait behind that task while another worker idles.
    pub(crate) fn on_submit(&mut self, e: usize, queued: u64, receipt: BatchSeq) {
        if !self.employees[e].manager {
            self.set_idle(e, 0);
        }
        self.on_queued(e, queued, receipt);
    }

    /// Employee `e` holds `queued` delayed tasks after reading every batch up to `receipt` (said
    /// with a submission).
    pub(crate) fn on_queued(&mut self, e: usize, queued: u64, receipt: BatchSeq) {
        let queued = queued + self.overflow_after(e, receipt);
        self.set_backlog(e, queued);
    }

    /// Sum of the backlog estimates (a manager's answer to a steal from above).
    pub(crate) fn backlog_total(&self) -> u64 {
        debug_assert_eq!(
            self.backlog_sum,
            self.employees.iter().map(|e| e.backlog).sum::<u64>()
        );
        self.backlog_sum
    }

    /// Steal requests outstanding.
    pub(crate) fn steals_pending(&self) -> usize {
        self.requests
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::{Address, Format, JobId, LogSpec, MailboxId};

    /// `n` tasks of one mailbox (for the schedulers' tests).
    pub(crate) fn tasks(n: usize) -> Vec<TaskMsg> {
        (0..n)
            .map(|i| TaskMsg {
                addr: Address {
                    rank: Rank(9),
                    mailbox: MailboxId(1),
                    slot: i as u32,
                },
                job: JobId(1),
                function: "t".into(),
                label: None,
                args: vec![],
                format: Format::Bincode,
                breadcrumbs: crate::protocol::Breadcrumbs::new(),
                log: LogSpec::OFF,
                context: vec![],
                needs: 0,
            })
            .collect()
    }

    fn needing(n: usize, needs: u64) -> Vec<TaskMsg> {
        tasks(n)
            .into_iter()
            .map(|t| TaskMsg { needs, ..t })
            .collect()
    }

    fn assigned(out: &Outbox) -> std::collections::BTreeMap<u32, usize> {
        let mut m = std::collections::BTreeMap::new();
        for (to, msg) in out {
            if let Msg::Down(Down::Assign { tasks, .. }) = msg {
                *m.entry(to.0).or_default() += tasks.len();
            }
        }
        m
    }

    #[test]
    fn tasks_that_need_resources_go_only_where_workers_offer_them() {
        // ranks 1, 2: gpu workers; 3, 4: plain; 5: a manager of 2 gpu and 2 plain workers
        let mut b = Boss::new(
            &[
                (Rank(1), 1),
                (Rank(2), 1),
                (Rank(3), 1),
                (Rank(4), 1),
                (Rank(5), 4),
            ],
            3,
        );
        b.set_classes(vec![
            vec![(1, 1)],
            vec![(1, 1)],
            vec![(0, 1)],
            vec![(0, 1)],
            vec![(0, 2), (1, 2)],
        ]);
        let mut out = Outbox::new();
        b.place_all(needing(40, 1), &mut out);
        let got = assigned(&out);
        assert!(!got.contains_key(&3) && !got.contains_key(&4), "{got:?}");
        assert_eq!(got.values().sum::<usize>(), 40);
        assert!(
            got[&5] >= 10 && got[&1] >= 5 && got[&2] >= 5,
            "spread by eligible workers: {got:?}"
        );
        // overflow that needs nothing goes where workers offer nothing
        out.clear();
        b.place_all(tasks(30), &mut out);
        let got = assigned(&out);
        assert!(!got.contains_key(&1) && !got.contains_key(&2), "{got:?}");
        assert_eq!(got.values().sum::<usize>(), 30);
        // an idle gpu worker takes a task that needs nothing, and one that needs a gpu
        b.on_waiting(0, 1, BatchSeq(u64::MAX));
        out.clear();
        assert!(b.place_idle(tasks(1), &mut out).is_empty());
        assert_eq!(assigned(&out), [(1, 1)].into());
        b.on_waiting(1, 1, BatchSeq(u64::MAX));
        out.clear();
        assert!(b.place_idle(needing(1, 1), &mut out).is_empty());
        assert_eq!(assigned(&out), [(2, 1)].into());
        // an idle plain worker takes none that needs a gpu: it goes back to the caller
        b.on_waiting(2, 1, BatchSeq(u64::MAX));
        out.clear();
        assert_eq!(b.place_idle(needing(1, 1), &mut out).len(), 1);
        assert!(out.is_empty());
    }

    #[test]
    fn receipts_discount_batches_in_flight() {
        let mut b = Boss::new(&[(Rank(1), 1)], 1);
        let mut out = Outbox::new();
        b.place_all(tasks(1), &mut out); // batch 1
        assert_eq!(b.idle_total(), 0);
        b.place_all(tasks(1), &mut out); // batch 2, overflow
                                         // the worker finished batch 1 before reading batch 2: still busy
        b.on_waiting(0, 1, BatchSeq(1));
        assert_eq!(b.idle_total(), 0);
        b.on_waiting(0, 1, BatchSeq(2));
        assert_eq!(b.idle_total(), 1);
    }

    #[test]
    fn idle_slots_fill_first_then_least_backlog() {
        let mut b = Boss::new(&[(Rank(1), 1), (Rank(2), 1), (Rank(3), 1)], 7);
        let mut out = Outbox::new();
        b.place_all(tasks(9), &mut out);
        let per: Vec<usize> = out
            .iter()
            .map(|(_, m)| match m {
                Msg::Down(Down::Assign { tasks, .. }) => tasks.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(per.iter().sum::<usize>(), 9);
        let mut counts = std::collections::HashMap::new();
        for (to, m) in &out {
            if let Msg::Down(Down::Assign { tasks, .. }) = m {
                *counts.entry(*to).or_insert(0) += tasks.len();
            }
        }
        assert!(counts.values().all(|&c| c == 3), "{counts:?}");
    }

    fn steals(out: &Outbox) -> Vec<(u32, u32)> {
        out.iter()
            .filter_map(|(to, m)| match m {
                Msg::Down(Down::Steal { max }) => Some((to.0, *max)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_long_queue_feeds_several_idle_workers_in_one_round() {
        let mut b = Boss::new(&[(Rank(1), 1), (Rank(2), 1), (Rank(3), 1)], 5);
        let mut out = Outbox::new();
        b.place_all(tasks(3), &mut out); // one each, batch 1 everywhere
        b.on_queued(2, 10, BatchSeq(1)); // rank 3 says it holds 10 more
        out.clear();
        b.on_waiting(0, 1, BatchSeq(1));
        b.plan_steals(b.idle_total(), &mut out);
        b.on_waiting(1, 1, BatchSeq(1));
        b.plan_steals(b.idle_total(), &mut out);
        // asked again before its first answer: both idle workers are served by rank 3
        assert_eq!(steals(&out), vec![(3, 1), (3, 1)]);
        // each answer says what is left; an empty queue gets no more requests
        b.on_stolen(2, 0, BatchSeq(1));
        b.on_stolen(2, 0, BatchSeq(1));
        out.clear();
        b.plan_steals(b.idle_total(), &mut out);
        assert!(steals(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn a_worker_that_submits_after_it_said_idle_is_busy_and_its_queue_is_stolen() {
        let mut b = Boss::new(&[(Rank(1), 1), (Rank(2), 1)], 5);
        let mut out = Outbox::new();
        b.place_all(tasks(2), &mut out); // one each, batch 1 everywhere
                                         // both idle: rank 2's task awaits children that rank 1 ran
        b.on_waiting(1, 1, BatchSeq(1));
        b.on_waiting(0, 1, BatchSeq(1));
        b.plan_steals(b.idle_total(), &mut out);
        // the results come back, rank 2's task resumes (no batch from the boss) and keeps 16
        // children in its queue while it computes
        b.on_submit(1, 16, BatchSeq(1));
        out.clear();
        b.plan_steals(b.idle_total(), &mut out);
        assert_eq!(b.idle_total(), 1);
        assert_eq!(steals(&out)[0], (2, 1), "{out:?}");
    }

    #[test]
    fn overflow_sent_after_an_answer_still_counts() {
        let mut b = Boss::new(&[(Rank(1), 1), (Rank(2), 1)], 5);
        let mut out = Outbox::new();
        b.place_all(tasks(2), &mut out); // batch 1 each
        b.place_all(tasks(2), &mut out); // batch 2 each: overflow
        out.clear();
        b.on_waiting(0, 1, BatchSeq(2)); // rank 1 is idle
        b.plan_steals(b.idle_total(), &mut out);
        assert_eq!(steals(&out), vec![(2, 1)]);
        // rank 2 answered before reading batch 2: that overflow is still queued there
        b.on_stolen(1, 0, BatchSeq(1));
        assert_eq!(b.backlog_total(), 1);
    }

    #[test]
    fn a_manager_of_one_worker_keeps_its_queue_through_its_reports() {
        // two nodes: a manager with one worker (rank 1) and one with two (rank 4)
        let mut b = Boss::new(&[(Rank(1), 1), (Rank(4), 2)], 3);
        b.set_managers(&[true, true]);
        let mut out = Outbox::new();
        b.place_all(tasks(3), &mut out); // an idle slot each: batch 1 everywhere
        b.on_occupied(1, 2, 0); // rank 4's workers are inside long tasks
        out.clear();
        b.place_all(tasks(1), &mut out); // overflow: to rank 1, the one not occupied
        assert!(matches!(out[..], [(Rank(1), _)]), "{out:?}");
        // rank 1's worker goes into a long task, and its idle count stays 0
        b.on_occupied(0, 1, 0);
        b.on_waiting(0, 0, BatchSeq(2));
        assert_eq!(b.backlog_total(), 1, "the manager still holds the overflow");
        // rank 4's workers are free and idle: one steals it
        b.on_occupied(1, 0, 0);
        b.on_waiting(1, 2, BatchSeq(u64::MAX));
        out.clear();
        b.plan_steals(b.idle_total(), &mut out);
        assert_eq!(steals(&out).first().map(|s| s.0), Some(1), "{out:?}");
        // a worker (not a manager) in rank 1's place hands its queue back as it is occupied
        let mut w = Boss::new(&[(Rank(1), 1), (Rank(4), 2)], 3);
        w.place_all(tasks(3), &mut out);
        w.on_occupied(1, 2, 0);
        w.place_all(tasks(1), &mut out);
        w.on_occupied(0, 1, 0);
        assert_eq!(w.backlog_total(), 0);
    }

    #[test]
    fn a_jobs_first_task_goes_to_the_employee_idle_last() {
        let mut b = Boss::new(&[(Rank(1), 1), (Rank(2), 1), (Rank(3), 1)], 9);
        let mut out = Outbox::new();
        b.place_all(tasks(3), &mut out);
        b.on_waiting(2, 1, BatchSeq(1)); // rank 3 idles first
        b.on_waiting(0, 1, BatchSeq(1)); // then rank 1
        out.clear();
        let mut root = tasks(1);
        b.place_root(root.remove(0), &mut out);
        assert!(matches!(out[..], [(Rank(1), _)]), "{out:?}");
        // with nobody idle, it is placed like any task
        b.on_waiting(2, 0, BatchSeq(1));
        out.clear();
        b.place_root(tasks(1).remove(0), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn idle_slots_go_to_the_longest_idle_first() {
        let mut b = Boss::new(&[(Rank(1), 1), (Rank(2), 1), (Rank(3), 1)], 9);
        let mut out = Outbox::new();
        b.place_all(tasks(3), &mut out);
        b.on_waiting(2, 1, BatchSeq(1)); // rank 3 idles first
        b.on_waiting(0, 1, BatchSeq(1));
        out.clear();
        let rest = b.place_idle(tasks(1), &mut out);
        assert!(rest.is_empty());
        assert!(matches!(out[..], [(Rank(3), _)]), "{out:?}");
    }

    #[test]
    fn steals_go_to_loaded_employees_only_while_someone_idles() {
        let mut b = Boss::new(&[(Rank(1), 1), (Rank(2), 1)], 3);
        let mut out = Outbox::new();
        b.place_all(tasks(10), &mut out);
        out.clear();
        b.plan_steals(b.idle_total(), &mut out);
        assert!(out.is_empty(), "nobody idle, no steal");
        b.on_waiting(0, 1, BatchSeq(u64::MAX)); // employee 0 is done
        b.plan_steals(b.idle_total(), &mut out);
        assert_eq!(out.len(), 1);
        assert!(
            matches!(out[0], (Rank(2), Msg::Down(Down::Steal { max: 1 }))),
            "{out:?}"
        );
        out.clear();
        b.plan_steals(b.idle_total(), &mut out);
        assert!(
            out.is_empty(),
            "no more asked for than there are idle workers"
        );
        b.on_stolen(1, 0, BatchSeq(1));
        assert_eq!(b.steals_pending(), 0);
    }
    #[test]
    fn spare_requests_cover_victims_that_drained_unseen() {
        // one idle worker, eight busy ones each believed to hold one queued task
        let ranks: Vec<(Rank, u32)> = (1..=9).map(|r| (Rank(r), 1)).collect();
        let mut b = Boss::new(&ranks, 4);
        let mut out = Outbox::new();
        b.place_all(tasks(9), &mut out); // batch 1 each
        b.place_all(tasks(8), &mut out); // overflow to the 8 busy ones... and one more
        for e in 0..9 {
            b.on_queued(e, 1, BatchSeq(2));
        }
        b.on_waiting(0, 1, BatchSeq(2)); // rank 1 is idle and holds nothing
        out.clear();
        b.plan_steals(b.idle_total(), &mut out);
        let asked = steals(&out);
        // one request for the idle worker and SPARE_VICTIMS more, each to a different victim
        assert_eq!(asked.len(), 1 + SPARE_VICTIMS, "{asked:?}");
        let victims: std::collections::HashSet<u32> = asked.iter().map(|a| a.0).collect();
        assert_eq!(victims.len(), asked.len(), "{asked:?}");
        assert!(
            asked.iter().all(|&(r, max)| r != 1 && max == 1),
            "{asked:?}"
        );
        // spares do not use up the budget of a worker that goes idle next...
        b.on_waiting(8, 1, BatchSeq(2));
        out.clear();
        b.plan_steals(b.idle_total(), &mut out);
        assert_eq!(steals(&out).len(), 1, "{out:?}");
        // ...and every answer, spare or not, makes the estimate exact
        let all: Vec<u32> = asked
            .iter()
            .chain(steals(&out).iter())
            .map(|a| a.0)
            .collect();
        for r in &all {
            b.on_stolen((*r - 1) as usize, 0, BatchSeq(2));
        }
        assert_eq!(b.steals_pending(), 0);
        let never = (2..=8).filter(|r| !all.contains(r)).count() as u64;
        assert_eq!(
            b.backlog_total(),
            never,
            "only the victims never asked: {all:?}"
        );
    }
}
