//! Scheduling logic as plain state machines: `handle(from, msg, &mut outbox)`.
//!
//! No sockets, no MPI, no threads, no clocks. The same code runs under the MPI transport, in the
//! deterministic cluster simulation ([`crate::sim`]) and in unit tests. See
//! `docs/architecture.md` for how the pieces fit.

pub mod boss;
pub mod idmap;
pub mod manager;
pub mod rng;
pub mod server;
pub mod worker;

pub use manager::ManagerCore;
pub use server::{ClusterView, JobSpec, ServerCore, ServerEvent};
pub use worker::{
    CallError, ChildSpec, Claimed, Ready, TaskKey, Token, Tokens, WaitKind, WaitPoll, WorkerCore,
    WorkerStats,
};
