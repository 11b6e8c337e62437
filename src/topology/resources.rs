//! Resources: what the workers of a group offer (`offers=gpu=1`) and what a task needs.
//!
//! The runtime's resource names are numbered in the order the groups declare them (every rank
//! reads the same declarations, so every rank numbers them alike), and a set of names travels
//! as a bit mask (`TaskMsg::needs`): a worker may run a task when its mask holds every bit of
//! the task's. At most [`MAX_RESOURCES`] names.

use super::groups::GroupSpec;
use std::sync::RwLock;

/// Most resource names one runtime may declare (the bits of a mask).
pub const MAX_RESOURCES: usize = 64;

/// The runtime's resource names and the masks its workers offer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    names: Vec<String>,
    /// Distinct masks of the runtime's workers (only groups that have a worker somewhere).
    offered: Vec<u64>,
}

impl Resources {
    /// The names the groups offer, numbered in declaration order.
    pub fn from_groups(specs: &[GroupSpec]) -> Result<Resources, String> {
        let mut names: Vec<String> = Vec::new();
        for g in specs {
            for (r, _) in &g.offers {
                if !names.contains(r) {
                    names.push(r.clone());
                }
            }
        }
        if names.len() > MAX_RESOURCES {
            return Err(format!(
                "the groups offer {} resource names; at most {MAX_RESOURCES}",
                names.len()
            ));
        }
        Ok(Resources {
            names,
            offered: Vec::new(),
        })
    }

    /// The mask of what a group's workers offer.
    pub fn mask_of(&self, g: &GroupSpec) -> u64 {
        g.offers
            .iter()
            .filter_map(|(r, _)| self.names.iter().position(|n| n == r))
            .fold(0, |m, i| m | 1 << i)
    }

    /// Record that some worker offers `mask`.
    pub fn offered_by_a_worker(&mut self, mask: u64) {
        if !self.offered.contains(&mask) {
            self.offered.push(mask);
        }
    }

    /// The mask of a task's needs, or why no worker of this runtime can meet them.
    pub fn needs<S: AsRef<str>>(&self, names: &[S]) -> Result<u64, String> {
        let mut mask = 0u64;
        for n in names {
            let n = n.as_ref();
            match self.names.iter().position(|x| x == n) {
                Some(i) => mask |= 1 << i,
                None => {
                    return Err(format!(
                        "the task needs resource {n:?}, which no worker of this runtime offers ({}); declare a worker group with offers={n}",
                        self.offers_text()
                    ))
                }
            }
        }
        if mask != 0 && !self.offered.iter().any(|&o| o & mask == mask) {
            return Err(format!(
                "the task needs {}, which no single worker of this runtime offers ({})",
                self.names_of(mask),
                self.offers_text()
            ));
        }
        Ok(mask)
    }

    /// The names of a mask, as `gpu+ssd`.
    pub fn names_of(&self, mask: u64) -> String {
        let v: Vec<&str> = (0..self.names.len())
            .filter(|&i| mask & (1 << i) != 0)
            .map(|i| self.names[i].as_str())
            .collect();
        match v.is_empty() {
            true => "nothing".into(),
            false => v.join("+"),
        }
    }

    fn offers_text(&self) -> String {
        let v: Vec<String> = self
            .offered
            .iter()
            .filter(|&&m| m != 0)
            .map(|&m| self.names_of(m))
            .collect();
        match v.is_empty() {
            true => "its workers offer no resources".into(),
            false => format!("its workers offer {}", v.join(", ")),
        }
    }
}

/// The resource classes of the workers under `rank` (itself, for a worker): `(mask, workers)`,
/// from every rank's mask (`offers`, 0 for ranks that are not workers).
pub fn classes_under(lay: &super::Layout, rank: usize, offers: &[u64]) -> Vec<(u64, u32)> {
    let mut out: Vec<(u64, u32)> = Vec::new();
    let mut stack = vec![rank];
    while let Some(r) = stack.pop() {
        match lay.roles.get(r) {
            Some(super::Role::Worker { .. }) => {
                let m = offers.get(r).copied().unwrap_or(0);
                match out.iter_mut().find(|c| c.0 == m) {
                    Some(c) => c.1 += 1,
                    None => out.push((m, 1)),
                }
            }
            Some(super::Role::Manager { employees, .. } | super::Role::Server { employees }) => {
                stack.extend(employees.iter().map(|e| e.0 .0 as usize));
            }
            None => {}
        }
    }
    out.sort_unstable();
    out
}

/// This process's runtime (set at start-up, before any task runs).
static RUNTIME: RwLock<Option<Resources>> = RwLock::new(None);

/// Make `r` the resources tasks of this process are checked against.
pub fn install(r: Resources) {
    match RUNTIME.write() {
        Ok(mut g) => *g = Some(r),
        Err(p) => *p.into_inner() = Some(r),
    }
}

/// The mask of `names` in this process's runtime (a runtime without groups offers nothing).
pub fn needs<S: AsRef<str>>(names: &[S]) -> Result<u64, String> {
    if names.is_empty() {
        return Ok(0);
    }
    let guard = match RUNTIME.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    guard.clone().unwrap_or_default().needs(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_number_in_declaration_order_and_needs_are_checked() {
        let specs: Vec<GroupSpec> = [
            "gpu workers=2 offers=gpu=1,nvme",
            "big workers=1 offers=bigmem",
            "cpu workers=rest",
        ]
        .iter()
        .map(|l| GroupSpec::parse(l).unwrap())
        .collect();
        let mut r = Resources::from_groups(&specs).unwrap();
        let masks: Vec<u64> = specs.iter().map(|g| r.mask_of(g)).collect();
        assert_eq!(masks, vec![0b011, 0b100, 0]);
        for m in masks {
            r.offered_by_a_worker(m);
        }
        assert_eq!(r.needs(&["gpu"]), Ok(1));
        assert_eq!(r.needs(&["nvme", "gpu"]), Ok(3));
        assert_eq!(r.needs::<&str>(&[]), Ok(0));
        let e = r.needs(&["tpu"]).unwrap_err();
        assert!(e.contains("\"tpu\"") && e.contains("offers=tpu"), "{e}");
        let e = r.needs(&["gpu", "bigmem"]).unwrap_err();
        assert!(
            e.contains("gpu+bigmem") && e.contains("no single worker"),
            "{e}"
        );
        assert!(e.contains("gpu+nvme, bigmem"), "{e}");
        // a group without workers anywhere offers nothing
        let mut none = Resources::from_groups(&specs).unwrap();
        none.offered_by_a_worker(0);
        assert!(none
            .needs(&["gpu"])
            .unwrap_err()
            .contains("no single worker"));
    }
}
