//! bqrt: a runtime for compile-time parallelism on supercomputers.
//!
//! One binary runs under the MPI launcher: rank 0 is the server, per-node leaders are managers,
//! every other rank is a worker. Tasks are `async fn`s that submit and await child tasks; see
//! [`Registry`] and [`Ctx`]. The modules' layers are listed in `docs/architecture.md`.

pub mod builtins;
pub mod cli;
pub mod client;
pub mod executor;
pub mod gateway;
pub mod jobs;
pub mod logging;
pub mod protocol;
#[cfg(feature = "python")]
pub mod python;
pub mod runtime;
pub mod sched;
/// The deterministic whole-cluster simulation, for tests and benchmarks (feature `sim`, which
/// their builds turn on); not part of the public API.
#[cfg(feature = "sim")]
#[doc(hidden)]
pub mod sim;
pub mod token;
pub mod topology;
pub mod transport;

pub use executor::{Cache, Ctx, MapFuture, Options, Registry, TaskError, TaskFuture, TaskResult};
