//! bqrt: a runtime for compile-time parallelism on supercomputers.
//!
//! One binary runs under the MPI launcher: rank 0 is the server, per-node leaders are managers,
//! every other rank is a worker. Tasks are `async fn`s that submit and await child tasks; see
//! [`Registry`] and [`Ctx`].

pub mod builtins;
pub mod cli;
pub mod client;
pub mod core;
pub mod executor;
pub mod gateway;
pub mod logging;
pub mod protocol;
#[cfg(feature = "python")]
pub mod python;
pub mod runtime;
pub mod sim;
pub mod task;
pub mod topology;
pub mod transport;

pub use executor::{Cache, Ctx, MapFuture, Options, TaskFuture};
pub use task::{Registry, TaskError, TaskResult};
