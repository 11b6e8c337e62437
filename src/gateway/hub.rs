//! The hub: the gateway's one thread that owns the server handle (and so the job table).
//!
//! It waits on two channels, connection messages and server events, feeds each to the handle
//! and sends the replies that come out to their connections' writer queues. A connection whose
//! queue is full does not read its replies and is cut off rather than buffered forever. It
//! stops when the stop flag is set (after listening [`stop::SETTLE`] for a lost-rank report),
//! when a client asks the runtime to stop, or when a rank is lost; then every client is told
//! why.

use super::{ConnId, HubIn, Outlet};
use crate::protocol::native::Reply;
use crate::runtime::{stop, ServerHandle};
use crossbeam::channel::{select, Receiver};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest wait between two looks at the stop flag and the job table's timers.
const POLL: Duration = Duration::from_millis(50);

pub(super) struct Hub<'h> {
    handle: &'h mut ServerHandle,
    conns: HashMap<ConnId, Outlet>,
}

impl<'h> Hub<'h> {
    pub(super) fn new(handle: &'h mut ServerHandle) -> Hub<'h> {
        Hub {
            handle,
            conns: HashMap::new(),
        }
    }

    /// Serve until stopped; then tell every client and return the runtime's error, if any.
    pub(super) fn run(
        mut self,
        hub_rx: &Receiver<HubIn>,
        stop: &AtomicBool,
        reason: &str,
    ) -> Option<String> {
        self.serve(hub_rx, stop);
        let reason = match (self.handle.fatal(), self.handle.stop_requested()) {
            (Some(f), _) => f.to_string(),
            (None, true) => "a client asked the runtime to stop".to_string(),
            (None, false) => reason.to_string(),
        };
        self.tell_everyone(reason);
        self.handle.fatal().map(str::to_string)
    }

    fn serve(&mut self, hub_rx: &Receiver<HubIn>, stop: &AtomicBool) {
        let events = self.handle.events().clone();
        let mut settle: Option<Instant> = None;
        while self.handle.fatal().is_none() && !self.handle.stop_requested() {
            let now = Instant::now();
            if stop.load(Ordering::SeqCst) && now >= *settle.get_or_insert(now + stop::SETTLE) {
                return;
            }
            let due = self.handle.table().next_deadline();
            let wait = due.map_or(POLL, |d| d.saturating_duration_since(now).min(POLL));
            let mut replies = Vec::new();
            select! {
                recv(hub_rx) -> m => match m {
                    Ok(m) => self.on_conn(m, &mut replies),
                    Err(_) => return,
                },
                recv(events) -> ev => match ev {
                    Ok(ev) => self.handle.on_event(ev, &mut replies),
                    Err(_) => return,
                },
                default(wait) => {}
            }
            let now = Instant::now();
            if due.is_some_and(|d| d <= now) {
                self.handle.tick(now, &mut replies);
            }
            self.send_all(replies);
        }
    }

    fn on_conn(&mut self, m: HubIn, replies: &mut Vec<(ConnId, Reply)>) {
        match m {
            HubIn::Open { conn, outlet } => {
                self.conns.insert(conn, outlet);
                self.handle.open(conn);
            }
            HubIn::Request { conn, req } => {
                self.handle.request(conn, req, Instant::now(), replies);
            }
            HubIn::Fatal { conn, reason } => {
                replies.push((conn, Reply::Refused { reason }));
                self.send_all(std::mem::take(replies));
                self.close(conn, replies);
            }
            HubIn::Closed { conn } => self.close(conn, replies),
        }
    }

    fn close(&mut self, conn: ConnId, replies: &mut Vec<(ConnId, Reply)>) {
        self.conns.remove(&conn);
        self.handle.close(conn, replies);
    }

    fn send_all(&mut self, replies: Vec<(ConnId, Reply)>) {
        let mut slow = Vec::new();
        for (conn, reply) in replies {
            let Some(outlet) = self.conns.get(&conn) else {
                continue;
            };
            if !outlet.send(reply) {
                log::warn!(target: "bqrt::gateway", "connection {} does not read its replies; closing it", conn.0);
                if let Some(o) = self.conns.remove(&conn) {
                    o.close();
                }
                slow.push(conn);
            }
        }
        for conn in slow {
            let mut more = Vec::new();
            self.handle.close(conn, &mut more);
            self.send_all(more);
        }
    }

    /// The runtime is stopping: tell every client, and give writers a moment to deliver it.
    fn tell_everyone(&mut self, reason: String) {
        for outlet in self.conns.values() {
            let reason = reason.clone();
            let _ = outlet.send(Reply::Shutdown { reason });
        }
        let deadline = Instant::now() + stop::NOTICE;
        while self.conns.values().any(Outlet::pending) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
