//! Worker groups: the workers of each node split into named groups, each with its own cores per
//! worker, BLAS threads, environment (with templates) and the resources its workers offer.
//!
//! A group is declared by one line of words (a `--group` flag, or a line of a `--groups` file):
//!
//! ```text
//! gpu workers=2 cores=1 gpus=2 offers=gpu=1 env.CUDA_VISIBLE_DEVICES={gpu}
//! cpu workers=rest cores=2
//! ```
//!
//! The first word is the name; the others are `key=value`. On every node, the node's workers (in
//! rank order) fill the groups in the order they are declared; `workers=rest` (at most one group)
//! takes what the others leave. With no group declared, every worker is in one group `default`
//! shaped by `--blas-threads` and `--gpus-per-node`, as before groups existed.
//!
//! Templates in `env.` values: `{gpu}` (the worker's index in its group modulo the group's
//! `gpus`), `{index}` (its index in its group on this node), `{local_rank}` (its index among
//! the node's workers), `{node}` (the node's index), `{group}` (the group's name).

use std::fmt;

/// How many of a node's workers a group takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Count {
    Exactly(u32),
    /// What the other groups leave.
    Rest,
}

/// One declared group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    pub workers: Count,
    /// Cores pinned to each worker.
    pub cores: u32,
    /// BLAS/OpenMP threads per worker (default: `cores`).
    pub blas: Option<u32>,
    /// GPUs the group's workers share round robin (`{gpu}`).
    pub gpus: Option<u32>,
    /// Environment variables, values possibly holding templates.
    pub env: Vec<(String, String)>,
    /// Resources each worker offers, with amounts.
    pub offers: Vec<(String, u32)>,
}

/// Most groups one runtime may declare.
pub const MAX_GROUPS: usize = 64;

const TEMPLATES: [&str; 5] = ["gpu", "index", "local_rank", "node", "group"];

impl GroupSpec {
    /// The group every worker is in when none is declared.
    pub fn default_group(blas_threads: u32, gpus_per_node: u32) -> GroupSpec {
        GroupSpec {
            name: "default".into(),
            workers: Count::Rest,
            cores: 1,
            blas: Some(blas_threads),
            gpus: (gpus_per_node > 0).then_some(gpus_per_node),
            env: match gpus_per_node {
                0 => Vec::new(),
                _ => vec![("CUDA_VISIBLE_DEVICES".into(), "{gpu}".into())],
            },
            offers: Vec::new(),
        }
    }

    /// Parse one declaration (see the module documentation).
    pub fn parse(line: &str) -> Result<GroupSpec, String> {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else {
            return Err("a group needs a name, for example `gpu workers=2 offers=gpu`".into());
        };
        let named = |problem: String| format!("group {name:?}: {problem}");
        if name.contains('=')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return Err(format!(
                "group name {name:?}: use letters, digits, - and _, and put it first (`{name}` is not a name)"
            ));
        }
        let mut g = GroupSpec {
            name: name.to_string(),
            workers: Count::Rest,
            cores: 1,
            blas: None,
            gpus: None,
            env: Vec::new(),
            offers: Vec::new(),
        };
        let mut counted = false;
        for w in words {
            let Some((key, value)) = w.split_once('=') else {
                return Err(named(format!("{w:?} is not key=value")));
            };
            let number = |what: &str| -> Result<u32, String> {
                match value.parse::<u32>() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => Err(named(format!(
                        "{what}={value:?}: must be a whole number >= 1"
                    ))),
                }
            };
            match key {
                "workers" => {
                    counted = true;
                    g.workers = match value {
                        "rest" => Count::Rest,
                        _ => Count::Exactly(number("workers").map_err(|e| e + " or `rest`")?),
                    }
                }
                "cores" => g.cores = number("cores")?,
                "blas" => g.blas = Some(number("blas")?),
                "gpus" => g.gpus = Some(number("gpus")?),
                "offers" => {
                    for item in value.split(',').filter(|s| !s.is_empty()) {
                        let (res, amount) = match item.split_once('=') {
                            Some((r, a)) => match a.parse::<u32>() {
                                Ok(n) if n >= 1 => (r, n),
                                _ => {
                                    return Err(named(format!(
                                        "offers: {item:?}: the amount must be a whole number >= 1"
                                    )))
                                }
                            },
                            None => (item, 1),
                        };
                        check_resource_name(res).map_err(named)?;
                        if g.offers.iter().any(|(r, _)| r == res) {
                            return Err(named(format!("offers {res:?} twice")));
                        }
                        g.offers.push((res.to_string(), amount));
                    }
                }
                _ => match key.strip_prefix("env.") {
                    Some(var) if !var.is_empty() && !var.contains('\0') => {
                        check_templates(value).map_err(&named)?;
                        g.env.push((var.to_string(), value.to_string()));
                    }
                    _ => {
                        return Err(named(format!(
                            "unknown key {key:?}; the keys are workers, cores, blas, gpus, offers and env.NAME"
                        )))
                    }
                },
            }
        }
        if !counted {
            return Err(named(
                "say how many workers: workers=N or workers=rest".into(),
            ));
        }
        if g.gpus.is_none() && g.env.iter().any(|(_, v)| v.contains("{gpu}")) {
            return Err(named(
                "{gpu} needs the number of GPUs the group shares: add gpus=N (or --gpus-per-node N)"
                    .into(),
            ));
        }
        Ok(g)
    }

    /// The value of `env.`-templated variables for one worker.
    fn expand(&self, value: &str, at: &Placement, node: u32) -> String {
        let gpu = self.gpus.map_or(0, |n| at.index % n);
        value
            .replace("{gpu}", &gpu.to_string())
            .replace("{index}", &at.index.to_string())
            .replace("{local_rank}", &at.local.to_string())
            .replace("{node}", &node.to_string())
            .replace("{group}", &self.name)
    }

    /// Offers as written in `BQRT_RESOURCES` and shown by `-v` and `top`: `gpu=1,ssd=2`.
    pub fn offers_text(&self) -> String {
        self.offers
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Resource names: letters, digits, `-` and `_`.
pub fn check_resource_name(res: &str) -> Result<(), String> {
    match !res.is_empty()
        && res
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        true => Ok(()),
        false => Err(format!(
            "resource name {res:?}: use letters, digits, - and _ (for example gpu)"
        )),
    }
}

fn check_templates(value: &str) -> Result<(), String> {
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("{value:?}: a {{ without }}"));
        };
        let name = &after[..close];
        if !TEMPLATES.contains(&name) {
            return Err(format!(
                "{value:?}: unknown template {{{name}}}; the templates are {{gpu}}, {{index}}, {{local_rank}}, {{node}} and {{group}}"
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Parse a `--groups` file: one declaration per line, `#` starts a comment.
pub fn parse_file(text: &str, path: &str) -> Result<Vec<GroupSpec>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(GroupSpec::parse(line).map_err(|e| format!("{path}:{}: {e}", n + 1))?);
    }
    if out.is_empty() {
        return Err(format!(
            "{path}: declares no group; write one per line, for example `gpu workers=2 offers=gpu`"
        ));
    }
    Ok(out)
}

/// Checks across groups: names unique, at most one `rest`, not too many.
pub fn check(specs: &[GroupSpec]) -> Result<(), String> {
    if specs.len() > MAX_GROUPS {
        return Err(format!(
            "{} groups declared; at most {MAX_GROUPS}",
            specs.len()
        ));
    }
    for (i, g) in specs.iter().enumerate() {
        if specs[..i].iter().any(|h| h.name == g.name) {
            return Err(format!("group {:?} is declared twice", g.name));
        }
    }
    if specs.iter().filter(|g| g.workers == Count::Rest).count() > 1 {
        return Err("more than one group says workers=rest; at most one may".into());
    }
    Ok(())
}

/// Where one worker of a node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Its group (index into the declarations).
    pub group: usize,
    /// Its index in its group on this node.
    pub index: u32,
    /// Its index among the node's workers.
    pub local: u32,
    /// The first of its cores, counting the cores of the node's earlier workers.
    pub first_slot: u32,
}

/// Why a node's workers do not fit the groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FitError {
    pub node: u32,
    pub workers: u32,
    pub wanted: u32,
    pub rest: bool,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rest {
            true => write!(
                f,
                "node {} runs {} workers but the groups with a fixed count take {}; start more ranks on it or lower a group's workers=",
                self.node, self.workers, self.wanted
            ),
            false => write!(
                f,
                "node {} runs {} workers but the groups take {}; give one group workers=rest, or make the counts add up",
                self.node, self.workers, self.wanted
            ),
        }
    }
}

/// Place a node's `workers` workers in the groups.
pub fn assign(specs: &[GroupSpec], workers: u32, node: u32) -> Result<Vec<Placement>, FitError> {
    let fixed: u32 = specs
        .iter()
        .map(|g| match g.workers {
            Count::Exactly(n) => n,
            Count::Rest => 0,
        })
        .fold(0u32, u32::saturating_add);
    let rest = specs.iter().any(|g| g.workers == Count::Rest);
    if fixed > workers || (!rest && fixed != workers) {
        return Err(FitError {
            node,
            workers,
            wanted: fixed,
            rest,
        });
    }
    let mut out = Vec::with_capacity(workers as usize);
    let mut slot = 0u32;
    for (gi, g) in specs.iter().enumerate() {
        let n = match g.workers {
            Count::Exactly(n) => n,
            Count::Rest => workers - fixed,
        };
        for index in 0..n {
            out.push(Placement {
                group: gi,
                index,
                local: out.len() as u32,
                first_slot: slot,
            });
            slot = slot.saturating_add(g.cores);
        }
    }
    Ok(out)
}

/// Core slots a node's workers take in all.
pub fn slots(specs: &[GroupSpec], placements: &[Placement]) -> u32 {
    placements
        .last()
        .map_or(0, |p| p.first_slot + specs[p.group].cores)
}

/// A worker's environment: BLAS threads, the group's variables, `BQRT_GROUP` and
/// `BQRT_RESOURCES`.
pub fn worker_env(g: &GroupSpec, at: &Placement, node: u32) -> Vec<(String, String)> {
    let blas = g.blas.unwrap_or(g.cores);
    let mut env: Vec<(String, String)> = super::pinning::blas_env(blas)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for (k, v) in &g.env {
        env.retain(|(e, _)| e != k);
        env.push((k.clone(), g.expand(v, at, node)));
    }
    env.push(("BQRT_GROUP".into(), g.name.clone()));
    env.push(("BQRT_RESOURCES".into(), g.offers_text()));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(lines: &[&str]) -> Vec<GroupSpec> {
        lines.iter().map(|l| GroupSpec::parse(l).unwrap()).collect()
    }

    #[test]
    fn a_declaration_reads_every_key() {
        let g = GroupSpec::parse(
            "gpu workers=2 cores=3 blas=2 gpus=4 offers=gpu=1,fast env.CUDA_VISIBLE_DEVICES={gpu} env.X=a=b",
        )
        .unwrap();
        assert_eq!(g.name, "gpu");
        assert_eq!(g.workers, Count::Exactly(2));
        assert_eq!((g.cores, g.blas, g.gpus), (3, Some(2), Some(4)));
        assert_eq!(g.offers, vec![("gpu".into(), 1), ("fast".into(), 1)]);
        assert_eq!(g.env[1], ("X".into(), "a=b".into()));
        assert_eq!(g.offers_text(), "gpu=1,fast=1");
    }

    #[test]
    fn bad_declarations_name_the_problem() {
        for (line, says) in [
            ("", "needs a name"),
            ("workers=2", "put it first"),
            ("g cores=2", "how many workers"),
            ("g workers=0", "workers=\"0\""),
            ("g workers=two", "or `rest`"),
            ("g workers=1 speed=3", "unknown key \"speed\""),
            ("g workers=1 env.X={gpu}", "gpus=N"),
            ("g workers=1 env.X={rank}", "unknown template {rank}"),
            ("g workers=1 env.X={node", "without"),
            ("g workers=1 offers=gpu=x", "amount"),
            ("g workers=1 offers=g/pu", "resource name"),
            ("g workers=1 offers=gpu,gpu", "twice"),
            ("g workers=1 nonsense", "not key=value"),
        ] {
            let e = GroupSpec::parse(line).unwrap_err();
            assert!(e.contains(says), "{line:?}: {e}");
        }
        let e = parse_file("# only a comment\n", "g.conf").unwrap_err();
        assert!(e.contains("g.conf") && e.contains("no group"), "{e}");
        let e = parse_file("a workers=1\nb workers=x\n", "g.conf").unwrap_err();
        assert!(e.starts_with("g.conf:2: group \"b\""), "{e}");
        let two = specs(&["a workers=rest", "b workers=rest"]);
        assert!(check(&two).unwrap_err().contains("more than one"));
        let dup = specs(&["a workers=1", "a workers=2"]);
        assert!(check(&dup).unwrap_err().contains("twice"));
    }

    #[test]
    fn workers_fill_the_groups_in_order_and_rest_takes_the_remainder() {
        let s = specs(&["gpu workers=2 cores=1", "cpu workers=rest cores=2"]);
        let p = assign(&s, 5, 0).unwrap();
        let groups: Vec<usize> = p.iter().map(|x| x.group).collect();
        assert_eq!(groups, vec![0, 0, 1, 1, 1]);
        let firsts: Vec<u32> = p.iter().map(|x| x.first_slot).collect();
        assert_eq!(firsts, vec![0, 1, 2, 4, 6]);
        assert_eq!(slots(&s, &p), 8);
        assert_eq!(p[3].index, 1);
        assert_eq!(p[3].local, 3);
    }

    #[test]
    fn counts_that_do_not_fit_the_node_name_it() {
        let s = specs(&["gpu workers=2", "cpu workers=2"]);
        let e = assign(&s, 3, 1).unwrap_err().to_string();
        assert!(
            e.contains("node 1 runs 3 workers but the groups take 4"),
            "{e}"
        );
        let e = assign(&s, 5, 0).unwrap_err().to_string();
        assert!(e.contains("workers=rest"), "{e}");
        let r = specs(&["gpu workers=4", "cpu workers=rest"]);
        assert!(assign(&r, 2, 0)
            .unwrap_err()
            .to_string()
            .contains("fixed count"));
        assert_eq!(assign(&r, 4, 0).unwrap().len(), 4, "rest may be empty");
    }

    #[test]
    fn templates_expand_per_worker() {
        let s = specs(&[
            "gpu workers=3 gpus=2 offers=gpu env.CUDA_VISIBLE_DEVICES={gpu} env.TAG={group}-{node}-{index}-{local_rank}",
        ]);
        let p = assign(&s, 3, 7).unwrap();
        let env = worker_env(&s[0], &p[2], 7);
        let get = |k: &str| env.iter().find(|(e, _)| e == k).map(|(_, v)| v.clone());
        assert_eq!(get("CUDA_VISIBLE_DEVICES").as_deref(), Some("0"));
        assert_eq!(get("TAG").as_deref(), Some("gpu-7-2-2"));
        assert_eq!(get("OMP_NUM_THREADS").as_deref(), Some("1"));
        assert_eq!(get("BQRT_RESOURCES").as_deref(), Some("gpu=1"));
        assert_eq!(get("BQRT_GROUP").as_deref(), Some("gpu"));
        let k = specs(&["wide workers=1 cores=4"]);
        let env = worker_env(&k[0], &assign(&k, 1, 0).unwrap()[0], 0);
        assert!(env.contains(&("OPENBLAS_NUM_THREADS".into(), "4".into())));
    }

    /// `CUDA_VISIBLE_DEVICES` of each of a node's `n` workers in the default group.
    fn default_gpus(gpus_per_node: u32, n: u32) -> Vec<Option<String>> {
        let d = GroupSpec::default_group(1, gpus_per_node);
        assign(std::slice::from_ref(&d), n, 0)
            .unwrap()
            .iter()
            .map(|p| {
                worker_env(&d, p, 0)
                    .into_iter()
                    .find(|(k, _)| k == "CUDA_VISIBLE_DEVICES")
                    .map(|(_, v)| v)
            })
            .collect()
    }

    #[test]
    fn gpu_round_robin() {
        assert!(default_gpus(0, 4).iter().all(Option::is_none));
        let got: Vec<String> = default_gpus(2, 5).into_iter().flatten().collect();
        assert_eq!(got, ["0", "1", "0", "1", "0"]);
        assert_eq!(default_gpus(4, 7)[6].as_deref(), Some("2"));
    }

    #[test]
    fn the_default_group_keeps_the_old_flags_meaning() {
        let d = GroupSpec::default_group(2, 3);
        let p = assign(std::slice::from_ref(&d), 4, 0).unwrap();
        let env = worker_env(&d, &p[3], 0);
        assert!(env.contains(&("CUDA_VISIBLE_DEVICES".into(), "0".into())));
        assert!(env.contains(&("MKL_NUM_THREADS".into(), "2".into())));
        let none = worker_env(&GroupSpec::default_group(1, 0), &p[0], 0);
        assert!(!none.iter().any(|(k, _)| k == "CUDA_VISIBLE_DEVICES"));
    }
}
