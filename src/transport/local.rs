//! An in-process fabric: every rank is a thread, packets travel on channels.
//!
//! Used by in-process clusters ([`crate::runtime::LocalCluster`]) and tests. FIFO per
//! (sender, receiver) pair holds because each sender pushes into the receiver's one channel in
//! order.

use super::Fabric;
use crate::protocol::Rank;
use crossbeam::channel::{unbounded, Receiver, Sender};

pub struct LocalFabric {
    rank: Rank,
    peers: Vec<Sender<(Rank, Vec<u8>)>>,
    inbox: Receiver<(Rank, Vec<u8>)>,
}

impl LocalFabric {
    /// One fabric endpoint per rank.
    pub fn cluster(size: u32) -> Vec<LocalFabric> {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..size).map(|_| unbounded()).unzip();
        rxs.into_iter()
            .enumerate()
            .map(|(r, inbox)| LocalFabric {
                rank: Rank(r as u32),
                peers: txs.clone(),
                inbox,
            })
            .collect()
    }
}

impl Fabric for LocalFabric {
    fn rank(&self) -> Rank {
        self.rank
    }
    fn size(&self) -> u32 {
        self.peers.len() as u32
    }
    fn send(&mut self, to: Rank, packet: Vec<u8>) {
        if let Some(tx) = self.peers.get(to.0 as usize) {
            // a rank that already stopped drops what it is sent, as MPI would at finalize
            let _ = tx.send((self.rank, packet));
        }
    }
    fn try_recv(&mut self) -> Option<(Rank, Vec<u8>)> {
        self.inbox.try_recv().ok()
    }
    fn progress(&mut self) -> bool {
        false
    }
}
