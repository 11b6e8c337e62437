//! A task's ancestry: its ancestors' addresses, root first, shared between relatives.
//!
//! A child's breadcrumbs are its parent's plus the parent's address. Stored as a persistent list
//! (each node points to its parent's), so creating a child is O(1) and every task of a chain
//! shares one list instead of copying its prefix (a chain of depth d would otherwise copy and hold
//! O(d^2) addresses). On the wire it is the plain list of addresses, root first.

use super::{Address, MailboxAddr};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;

#[derive(Debug)]
struct Crumb {
    addr: Address,
    /// Crumbs from the root up to and including this one.
    len: u32,
    parent: Option<Arc<Crumb>>,
}

/// Ancestors' addresses, root first. Cheap to clone and to extend.
#[derive(Clone, Default)]
pub struct Breadcrumbs(Option<Arc<Crumb>>);

impl Breadcrumbs {
    /// No ancestors (a job's root task).
    pub fn new() -> Breadcrumbs {
        Breadcrumbs(None)
    }

    /// These breadcrumbs plus `addr` (the child of the task at `addr`).
    pub fn pushed(&self, addr: Address) -> Breadcrumbs {
        Breadcrumbs(Some(Arc::new(Crumb {
            addr,
            len: self.len() + 1,
            parent: self.0.clone(),
        })))
    }

    /// Number of ancestors: the task's depth.
    pub fn len(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.len)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Ancestors from the nearest (the parent) to the root.
    pub fn iter_up(&self) -> impl Iterator<Item = Address> + '_ {
        let mut cur = self.0.as_deref();
        std::iter::from_fn(move || {
            let c = cur?;
            cur = c.parent.as_deref();
            Some(c.addr)
        })
    }

    /// Ancestors root first.
    pub fn to_vec(&self) -> Vec<Address> {
        let mut v: Vec<Address> = self.iter_up().collect();
        v.reverse();
        v
    }

    /// Whether some ancestor's return address is in `mailbox`.
    pub fn has_mailbox(&self, mailbox: MailboxAddr) -> bool {
        self.iter_up().any(|a| a.mailbox_addr() == mailbox)
    }

    /// From a root-first list.
    pub fn from_addresses(addrs: &[Address]) -> Breadcrumbs {
        addrs.iter().fold(Breadcrumbs::new(), |b, &a| b.pushed(a))
    }
}

impl Drop for Breadcrumbs {
    /// Release a long chain iteratively (the default recursive drop of nested `Arc`s could
    /// overflow the stack for very deep task trees).
    fn drop(&mut self) {
        let mut cur = self.0.take();
        while let Some(node) = cur {
            match Arc::try_unwrap(node) {
                Ok(mut c) => cur = c.parent.take(),
                Err(_) => break,
            }
        }
    }
}

impl PartialEq for Breadcrumbs {
    fn eq(&self, other: &Breadcrumbs) -> bool {
        self.len() == other.len() && self.iter_up().eq(other.iter_up())
    }
}

impl std::fmt::Debug for Breadcrumbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.to_vec()).finish()
    }
}

impl Serialize for Breadcrumbs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_vec().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Breadcrumbs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Breadcrumbs, D::Error> {
        let v = Vec::<Address>::deserialize(d)?;
        Ok(Breadcrumbs::from_addresses(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MailboxId, Rank};

    fn a(i: u64) -> Address {
        Address {
            rank: Rank(i as u32),
            mailbox: MailboxId(i),
            slot: 0,
        }
    }

    #[test]
    fn shared_chains_read_root_first() {
        let root = Breadcrumbs::new().pushed(a(1));
        let left = root.pushed(a(2));
        let right = root.pushed(a(3));
        assert_eq!(left.to_vec(), vec![a(1), a(2)]);
        assert_eq!(right.to_vec(), vec![a(1), a(3)]);
        assert_eq!(left.len(), 2);
        assert!(left.has_mailbox(a(1).mailbox_addr()) && !left.has_mailbox(a(3).mailbox_addr()));
        assert_eq!(Breadcrumbs::from_addresses(&left.to_vec()), left);
    }

    #[test]
    fn a_very_deep_chain_drops_without_overflowing_the_stack() {
        let mut b = Breadcrumbs::new();
        for i in 0..1_000_000 {
            b = b.pushed(a(i));
        }
        assert_eq!(b.len(), 1_000_000);
        drop(b);
    }
}
