//! Identifier newtypes shared by every layer.
//!
//! An [`Address`] is a task's system-wide id and its return address at once: the rank whose
//! mailbox receives the task's result, the mailbox, and the slot inside it (a `map` of n tasks
//! owns one mailbox with n slots). Mailbox ids are never reused on a rank, so an address names
//! one task for the lifetime of the runtime.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An MPI rank (a process). Rank 0 is the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rank(pub u32);

impl Rank {
    /// The server's rank.
    pub const SERVER: Rank = Rank(0);
}

impl fmt::Display for Rank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {}", self.0)
    }
}

/// A mailbox on one rank: where the results of one `submit` or `map` land.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MailboxId(pub u64);

/// A job: what a client submits. It is the id of the server mailbox of its root task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.0)
    }
}

/// A mailbox named system-wide: the rank that owns it and its id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MailboxAddr {
    pub rank: Rank,
    pub mailbox: MailboxId,
}

/// A task's id and return address: `(rank, mailbox, slot)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address {
    pub rank: Rank,
    pub mailbox: MailboxId,
    pub slot: u32,
}

impl Address {
    /// The mailbox this address belongs to.
    pub fn mailbox_addr(&self) -> MailboxAddr {
        MailboxAddr {
            rank: self.rank,
            mailbox: self.mailbox,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {}, {})", self.rank.0, self.mailbox.0, self.slot)
    }
}

/// Sequence number of an `Assign` batch on one boss-to-employee link; read receipts name it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct BatchSeq(pub u64);
