//! Ranks, nodes and roles: who is the server, a manager or a worker, and where each is pinned.

pub mod groups;
pub mod layout;
pub mod pinning;
pub mod resources;

pub use layout::{layout, Layout, LayoutError, Role};
