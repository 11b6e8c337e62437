//! A whole cluster inside one process: a server and workers as threads over channels.
//!
//! Same cores, executor and transport loop as under MPI; only the fabric differs. Used by tests
//! and by library users who want the task API without a launcher.

use super::{run_member, server_parts, ServerHandle};
use crate::executor::Registry;
use crate::topology::{layout, Role};
use crate::transport::{drive, local::LocalFabric};
use std::thread::JoinHandle;

pub struct LocalCluster {
    handle: ServerHandle,
    threads: Vec<JoinHandle<()>>,
}

impl LocalCluster {
    /// A server and `workers` workers on one node.
    pub fn start(workers: u32, registry: Registry) -> LocalCluster {
        let n = workers.max(1) + 1;
        let lay = match layout(&vec![0; n as usize], 16) {
            Ok(l) => l,
            Err(e) => unreachable!("a one-node layout with {n} ranks is valid: {e}"),
        };
        let mut fabrics = LocalFabric::cluster(n).into_iter();
        let mut threads = Vec::new();
        let Some(mut server_fabric) = fabrics.next() else {
            unreachable!("n >= 2")
        };
        let Role::Server { employees } = &lay.roles[0] else {
            unreachable!("rank 0 is the server")
        };
        let (mut logic, cmd_rx, handle) = server_parts(
            None,
            employees,
            1,
            n,
            None,
            super::liveness::Heartbeat::new(None, super::stop::STUCK_AFTER),
            registry.clone(),
        );
        threads.push(std::thread::spawn(move || {
            if let Err(e) = drive(
                &mut server_fabric,
                &mut logic,
                &cmd_rx,
                &super::stop::shared(),
                super::PACE,
            ) {
                panic!("local server: {e}");
            }
        }));
        for (i, fabric) in fabrics.enumerate() {
            let role = lay.roles[i + 1].clone();
            let registry = registry.clone();
            threads.push(std::thread::spawn(move || {
                if let Err(e) = run_member(
                    fabric,
                    &role,
                    registry,
                    1,
                    &mut super::RankReport::default(),
                    super::Vigil {
                        watcher: None,
                        heartbeat: super::liveness::Heartbeat::new(None, super::stop::STUCK_AFTER),
                        stall_warning: None,
                    },
                    super::Offers::default(),
                ) {
                    panic!("local rank: {e}");
                }
            }));
        }
        LocalCluster { handle, threads }
    }

    pub fn handle(&mut self) -> &mut ServerHandle {
        &mut self.handle
    }

    /// Stop every rank and wait for their threads.
    pub fn shutdown(self) {
        self.handle.shutdown();
        for t in self.threads {
            let _ = t.join();
        }
    }
}
