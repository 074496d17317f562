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
        self.neighbours_in(owner, &self.survivors.masked)
            .into_iter()
            .filter(|p| !self.accuses(*p, owner))
            .collect()
    }
}
