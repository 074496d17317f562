//! Removing the masks once the survivors' shares are in: self-masks of the survivors,
//! pairwise masks shared with dropped sites, each secret checked against what its owner
//! advertised or committed to.

use curve25519_dalek::scalar::Scalar;
use rayon::prelude::*;
use std::collections::BTreeMap;

use super::{AggregateSum, Aggregator, Status};
use crate::crypto::AgreementSecret;
use crate::error::AbortReason;
use crate::ids::SiteId;
use crate::mask::MaskJob;
use crate::protocol;
use crate::ring::{MaskSign, PlainVector};
use crate::shamir;

impl Aggregator {
    pub(super) fn unmask(&mut self) {
        let t = self.config.threshold();
        let masked = self.survivors.masked.clone();
        let dropped: Vec<SiteId> = self.survivors.shared.difference(&masked).copied().collect();
        let mut interpolator = shamir::Interpolator::new(t);
        // Mask keys of dropped sites, checked against their advertised public keys.
        let mut dropped_secrets: BTreeMap<SiteId, AgreementSecret> = BTreeMap::new();
        let mut dropped_keys: Vec<(SiteId, Vec<SiteId>)> = Vec::with_capacity(dropped.len());
        for &owner in &dropped {
            let peers = self.masked_with(owner);
            if peers.is_empty() {
                continue;
            }
            let advertised = self.adverts[&owner].mask_key;
            let config = self.config.clone();
            let matches = |s: &Scalar| {
                protocol::mask_key_from_secret(&config, owner, s).public() == advertised
            };
            let shares = &self.mask_key_shares;
            let secret = match shamir::reconstruct_owner(
                &mut interpolator,
                shares,
                owner,
                t,
                "mask key",
                matches,
            ) {
                Ok(secret) => secret,
                Err(reason) => return self.abort(reason),
            };
            let key = protocol::mask_key_from_secret(&self.config, owner, &secret);
            dropped_keys.push((owner, peers));
            dropped_secrets.insert(owner, key);
        }
        let mut jobs = Vec::with_capacity(dropped_keys.len() + masked.len());
        for &owner in &masked {
            let committed = self.adverts[&owner].self_mask_commitment;
            let config = self.config.clone();
            let matches =
                |s: &Scalar| protocol::self_mask_commitment(&config, owner, s) == committed;
            let shares = &self.self_mask_shares;
            let secret = match shamir::reconstruct_owner(
                &mut interpolator,
                shares,
                owner,
                t,
                "self-mask seed",
                matches,
            ) {
                Ok(secret) => secret,
                Err(reason) => return self.abort(reason),
            };
            jobs.push(MaskJob {
                seed: protocol::self_mask_seed(&self.config, owner, &secret),
                sign: MaskSign::Sub,
            });
        }
        // The pairwise masks that survivors shared with dropped sites: one X25519 each,
        // a dropped site's with all its peers at once, the dropped sites in parallel.
        let agreed: Result<Vec<Vec<MaskJob>>, AbortReason> = dropped_keys
            .par_iter()
            .map(|(owner, peers)| self.pairwise_removals(*owner, &dropped_secrets[owner], peers))
            .collect();
        drop(dropped_secrets);
        match agreed {
            Ok(pairwise) => jobs.extend(pairwise.into_iter().flatten()),
            Err(reason) => return self.abort(reason),
        }
        let mut sum = std::mem::take(&mut self.masked_sum);
        crate::mask::apply_mask_streams(&mut sum, self.config.params().mask_prg, &jobs);
        self.result = Some(AggregateSum {
            contributors: masked.into_iter().collect(),
            sum: PlainVector::new(self.config.modulus(), sum),
        });
        self.status = Status::Finished;
    }

    /// The jobs that remove the pairwise masks `peers` shared with the dropped `owner`,
    /// whose reconstructed mask key is `key`.
    fn pairwise_removals(
        &self,
        owner: SiteId,
        key: &AgreementSecret,
        peers: &[SiteId],
    ) -> Result<Vec<MaskJob>, AbortReason> {
        let keys: Vec<_> = peers.iter().map(|p| &self.adverts[p].mask_key).collect();
        peers
            .iter()
            .zip(key.agree_all(&keys))
            .map(|(&peer, shared)| {
                let shared = shared.map_err(|_| AbortReason::Agreement { a: owner, b: peer })?;
                // `peer` applied sign(peer, owner); remove it by applying the opposite.
                let sign = match protocol::pairwise_sign(peer, owner) {
                    MaskSign::Add => MaskSign::Sub,
                    MaskSign::Sub => MaskSign::Add,
                };
                Ok(MaskJob {
                    seed: protocol::pairwise_seed(&self.config, owner, peer, &shared),
                    sign,
                })
            })
            .collect()
    }
}
