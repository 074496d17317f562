//! Accusations: a site names the neighbours whose share ciphertexts did not open for
//! it; the aggregator excludes them (or an accuser past the tolerance) before summing,
//! and counts only holders that did not accuse an owner when recovering its secrets.

use rayon::prelude::*;
use std::collections::BTreeMap;

use super::Aggregator;
use crate::ids::{SiteId, SiteSet};
use crate::ring::MaskedVector;

impl Aggregator {
    /// Whether `accuser` holds no valid shares of `owner` (and left their mask out).
    pub(super) fn accuses(&self, accuser: SiteId, owner: SiteId) -> bool {
        self.accusations
            .get(&accuser)
            .is_some_and(|list| list.binary_search(&owner).is_ok())
    }

    /// Settles the accusations among `responded` and returns U3: an accuser past the
    /// tolerance is excluded (its accusations ignored), then every accused site is.
    pub(super) fn settle_accusations(&mut self, mut responded: SiteSet) -> SiteSet {
        let tolerated = self.tolerated;
        let (over, within): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut self.accusations)
                .into_iter()
                .filter(|(a, _)| responded.contains(a))
                .partition(|(_, list)| list.len() > tolerated);
        for accuser in over.keys() {
            responded.remove(accuser);
        }
        for accused in within.values().flatten() {
            responded.remove(accused);
        }
        self.accusations = within
            .into_iter()
            .filter(|(a, _)| responded.contains(a))
            .collect();
        responded
    }

    /// Sums the masked inputs of `u3` (the others are discarded).
    pub(super) fn sum_uploads(&mut self, u3: &SiteSet) {
        let uploads = std::mem::take(&mut self.uploads);
        let vectors: Vec<&MaskedVector> = uploads
            .iter()
            .filter(|(s, _)| u3.contains(s))
            .map(|(_, v)| v)
            .collect();
        self.masked_sum
            .par_chunks_mut(1 << 14)
            .enumerate()
            .for_each(|(i, chunk)| {
                let start = i << 14;
                for v in &vectors {
                    let part = &v.as_slice()[start..start + chunk.len()];
                    for (acc, x) in chunk.iter_mut().zip(part) {
                        *acc = acc.wrapping_add(*x);
                    }
                }
            });
    }

    /// Holders of `owner`'s shares in `set` that did not accuse it.
    pub(super) fn valid_holders_in(&self, owner: SiteId, set: &SiteSet) -> usize {
        self.config
            .graph()
            .holders(owner)
            .iter()
            .filter(|s| set.contains(s) && !self.accuses(**s, owner))
            .count()
    }

    /// Survivors whose masked input carries a pairwise mask with the dropped `owner`.
    pub(super) fn masked_with(&self, owner: SiteId) -> Vec<SiteId> {
        self.masked_with_in(owner, &self.survivors.masked)
    }

    /// Members of `set` that masked with `owner` (neighbours that did not accuse it).
    fn masked_with_in(&self, owner: SiteId, set: &SiteSet) -> Vec<SiteId> {
        self.neighbours_in(owner, set)
            .into_iter()
            .filter(|p| !self.accuses(*p, owner))
            .collect()
    }

    /// Leaves out of `u3`, until nothing changes, the survivors that masked with a
    /// dropped site whose mask key fewer than t valid holders in `u3` could rebuild:
    /// their inputs could never be unmasked. They are treated as dropped (their own
    /// mask keys are rebuilt instead, their self-masks never revealed), so a site that
    /// gives valid shares to too few holders costs those few, not the round. When that
    /// would leave fewer than t, `u3` is returned as it was and the round aborts naming
    /// the owner that cannot be recovered.
    pub(super) fn drop_unrecoverable(&self, u3: SiteSet) -> SiteSet {
        let t = self.config.threshold();
        let original = u3.clone();
        let mut u3 = u3;
        loop {
            let stuck: Vec<SiteId> = self
                .survivors
                .shared
                .iter()
                .filter(|d| !u3.contains(d) && self.valid_holders_in(**d, &u3) < t)
                .flat_map(|d| self.masked_with_in(*d, &u3))
                .collect();
            if stuck.is_empty() {
                return if u3.len() >= t { u3 } else { original };
            }
            for s in stuck {
                u3.remove(&s);
            }
        }
    }
}
