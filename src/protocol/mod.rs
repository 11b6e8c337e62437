//! Typed messages between ranks and their wire encoding. See `docs/protocol.md`.

pub mod breadcrumbs;
pub mod codec;
pub mod ids;
pub mod message;
pub mod native;

pub use breadcrumbs::Breadcrumbs;
pub use ids::{Address, BatchSeq, JobId, MailboxAddr, MailboxId, Rank};
pub use message::{
    Down, Failure, Format, JobProgress, LogRecord, LogSpec, Msg, Outbox, Peer, Subtree, TaskMsg, Up,
};
