//! Shards of a run: a deterministic share of an experiment's training runs (arm ×
//! seed, [`Job`]), so that a cluster's job array (or several processes on one machine)
//! can fill one shared run directory.
//!
//! Arms that need other arms' models (an ensemble and its members) form one group and
//! always run in the same shard with the same seed; (seed, group) units are dealt to
//! shards round-robin, seed by seed, groups in the order of their first arm. Every shard claims its arms in the run directory (`arms/<key>/claim`,
//! created exclusively) before computing them, so two shards never write the same arm's
//! result even when they were started with different shard counts by mistake.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

use crate::error::ExpError;
use crate::spec::{ArmPlan, Experiment};

/// Shard K of N (1 ≤ K ≤ N), written `K/N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    index: usize,
    count: usize,
}

impl Shard {
    /// Shard `index` (1-based) of `count`.
    pub fn new(index: usize, count: usize) -> Result<Self, ExpError> {
        if count == 0 || index == 0 || index > count {
            return Err(ExpError::Config(format!(
                "shard {index}/{count}: give K/N with 1 ≤ K ≤ N (e.g. --shard 2/4)"
            )));
        }
        Ok(Shard { index, count })
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The training runs this shard computes, seed by seed, arms in file order.
    pub fn jobs(&self, experiment: &Experiment) -> Vec<Job> {
        let groups = groups(experiment);
        let mut mine: Vec<Job> = (0..experiment.seeds)
            .flat_map(|replicate| groups.iter().map(move |g| (replicate, g)))
            .enumerate()
            .filter(|(unit, _)| unit % self.count == self.index - 1)
            .flat_map(|(_, (replicate, arms))| arms.iter().map(move |&arm| Job { arm, replicate }))
            .collect();
        mine.sort_unstable();
        mine
    }
}

/// One training run: arm `arm` (an index into `experiment.arms`) with the experiment's
/// seed number `replicate` (0-based). Ordered seed by seed, then by arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Job {
    pub replicate: usize,
    pub arm: usize,
}

/// Every training run of an experiment, seed by seed.
pub fn all_jobs(experiment: &Experiment) -> Vec<Job> {
    (0..experiment.seeds)
        .flat_map(|replicate| (0..experiment.arms.len()).map(move |arm| Job { replicate, arm }))
        .collect()
}

/// How many (seed, group) units there are: the most shards that all get work.
pub fn units(experiment: &Experiment) -> usize {
    groups(experiment).len() * experiment.seeds
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ExpError;

    fn from_str(s: &str) -> Result<Self, ExpError> {
        let bad = || {
            ExpError::Config(format!(
                "shard \"{s}\": give K/N with 1 ≤ K ≤ N (e.g. --shard 2/4)"
            ))
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k = k.trim().parse::<usize>().map_err(|_| bad())?;
        let n = n.trim().parse::<usize>().map_err(|_| bad())?;
        Shard::new(k, n)
    }
}

/// The experiment's arms grouped so that every ensemble sits with its members; groups
/// are ordered by their first arm and hold arm indices in file order.
pub fn groups(experiment: &Experiment) -> Vec<Vec<usize>> {
    let n = experiment.arms.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let index: BTreeMap<&str, usize> = experiment
        .arms
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.as_str(), i))
        .collect();
    for (i, arm) in experiment.arms.iter().enumerate() {
        if let ArmPlan::Ensemble { members, .. } = &arm.plan {
            for m in members {
                if let Some(&j) = index.get(m.as_str()) {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
    }
    let mut by_root: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        let r = root(&mut parent, i);
        by_root.entry(r).or_default().push(i);
    }
    // Roots are each group's smallest index, so BTreeMap order is first-arm order.
    by_root.into_values().collect()
}

/// Claims an arm's directory for `shard`: creates `claim` exclusively, or accepts one
/// this shard wrote before (a resumed shard). Another shard's claim is refused.
pub fn claim(arm_dir: &Path, arm: &str, shard: Shard) -> Result<(), ExpError> {
    std::fs::create_dir_all(arm_dir).map_err(|e| ExpError::io(arm_dir, e))?;
    let path = arm_dir.join("claim");
    let me = shard.to_string();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(me.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| ExpError::io(&path, e))?;
            tessera_core::atomic::sync_dir(&path).map_err(|e| ExpError::io(&path, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let holder = std::fs::read_to_string(&path).map_err(|e| ExpError::io(&path, e))?;
            if holder.trim() == me {
                Ok(())
            } else {
                Err(ExpError::Config(format!(
                    "arm {arm} is claimed by shard {} of this run, not {me}: every shard of a \
                     run must use the same N (remove {} only if that shard is gone)",
                    holder.trim(),
                    path.display()
                )))
            }
        }
        Err(e) => Err(ExpError::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs_outside_the_range_are_refused() {
        for bad in ["0/3", "4/3", "1/0", "3", "a/b", "1/2/3", ""] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains("1 ≤ K ≤ N"), "{bad}: {e}");
        }
        assert_eq!("2/3".parse::<Shard>().unwrap(), Shard::new(2, 3).unwrap());
        assert_eq!(Shard::new(2, 3).unwrap().to_string(), "2/3");
    }

    #[test]
    fn a_claim_by_another_shard_is_refused_and_a_resumed_shard_accepted() {
        let dir = std::env::temp_dir().join(format!("tessera-claim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let one = Shard::new(1, 2).unwrap();
        claim(&dir, "a", one).unwrap();
        claim(&dir, "a", one).unwrap();
        let e = claim(&dir, "a", Shard::new(1, 3).unwrap()).unwrap_err();
        assert!(e.to_string().contains("claimed by shard 1/2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
