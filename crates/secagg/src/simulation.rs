//! An in-memory driver that runs one round between real [`Site`]s and an [`Aggregator`],
//! with scheduled dropouts. Every message is encoded and decoded on the way, so the
//! codec and the byte counts are those of deployment. Used by tests, benchmarks and
//! `tessera simulate`; the networked runtime lives in the orchestration crate.

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::aggregator::{AggregateSum, Aggregator, Status};
use crate::crypto::IdentityKeyPair;
use crate::error::{AggregatorError, SiteError};
use crate::ids::{Phase, SiteId};
use crate::messages::Envelope;
use crate::params::RoundConfig;
use crate::protocol::Roster;
use crate::ring::PlainVector;
use crate::site::Site;

/// One simulated site's identity and input.
pub struct SimulatedSite {
    pub id: SiteId,
    pub identity: Arc<IdentityKeyPair>,
    pub input: PlainVector,
}

/// Sites that fall silent: each sends nothing from the given phase on.
pub type DropSchedule = BTreeMap<SiteId, Phase>;

/// What happened in a simulated round.
#[derive(Debug)]
pub struct RoundOutcome {
    pub status: Status,
    pub result: Option<AggregateSum>,
    /// Bytes sent by sites to the aggregator, and by the aggregator to sites.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Every message the aggregator received, as (sender, message), when requested.
    pub received: Vec<(SiteId, Envelope)>,
    /// Sites that stopped with an error (none in an honest run).
    pub site_errors: Vec<(SiteId, SiteError)>,
    /// Messages the aggregator refused (none in an honest run).
    pub aggregator_errors: Vec<(SiteId, AggregatorError)>,
}

/// Runs one round to completion or abort. `seed` makes all site randomness repeatable.
pub fn run_round(
    config: &Arc<RoundConfig>,
    roster: &Arc<Roster>,
    sites: Vec<SimulatedSite>,
    drops: &DropSchedule,
    seed: [u8; 32],
    keep_received: bool,
) -> Result<RoundOutcome, AggregatorError> {
    let mut aggregator = Aggregator::new(config.clone(), roster.clone())?;
    let mut outcome = RoundOutcome {
        status: aggregator.status().clone(),
        result: None,
        bytes_up: 0,
        bytes_down: 0,
        received: Vec::new(),
        site_errors: Vec::new(),
        aggregator_errors: Vec::new(),
    };
    let silent_from = |id: SiteId, phase: Phase| drops.get(&id).is_some_and(|p| *p <= phase);

    let started: Vec<_> = sites
        .into_par_iter()
        .map(|s| {
            let mut rng = site_rng(seed, s.id);
            let made = Site::new(
                config.clone(),
                s.id,
                s.identity,
                roster.clone(),
                s.input,
                &mut rng,
            );
            (s.id, rng, made)
        })
        .collect();
    let mut live: BTreeMap<SiteId, (Site, ChaCha20Rng)> = BTreeMap::new();
    let mut inbox: Vec<(SiteId, Vec<u8>)> = Vec::new();
    for (id, rng, made) in started {
        match made {
            Ok((site, ad)) => {
                if !silent_from(id, Phase::AdvertiseKeys) {
                    inbox.push((id, ad.to_bytes()));
                }
                live.insert(id, (site, rng));
            }
            Err(e) => outcome.site_errors.push((id, e)),
        }
    }

    while let Status::Collecting(phase) = aggregator.status().clone() {
        for (from, bytes) in inbox.drain(..) {
            outcome.bytes_up += bytes.len() as u64;
            let env = match Envelope::from_bytes(&bytes) {
                Ok(env) => env,
                Err(e) => {
                    outcome.aggregator_errors.push((from, e.into()));
                    continue;
                }
            };
            if keep_received {
                outcome.received.push((from, env.clone()));
            }
            if let Err(e) = aggregator.handle(from, env) {
                outcome.aggregator_errors.push((from, e));
            }
        }
        // The deadline passes for whoever stayed silent.
        if aggregator.status() == &Status::Collecting(phase) {
            aggregator.close_phase()?;
        }
        let mut by_site: BTreeMap<SiteId, Vec<u8>> = BTreeMap::new();
        for out in aggregator.take_outgoing() {
            let bytes = out.envelope.to_bytes();
            outcome.bytes_down += bytes.len() as u64;
            by_site.insert(out.to, bytes);
        }
        // Each reply is the encoded message, or None when the site falls silent.
        type Reply = Result<Option<Vec<u8>>, SiteError>;
        let replies: Vec<(SiteId, Reply)> = live
            .par_iter_mut()
            .filter_map(|(id, (site, rng))| {
                let bytes = by_site.get(id)?;
                let result = Envelope::from_bytes(bytes)
                    .map_err(SiteError::from)
                    .and_then(|env| {
                        let reply = site.handle(env, rng)?;
                        Ok((!silent_from(*id, reply.phase())).then(|| reply.to_bytes()))
                    });
                Some((*id, result))
            })
            .collect();
        for (id, reply) in replies {
            match reply {
                Ok(Some(bytes)) => inbox.push((id, bytes)),
                Ok(None) => {}
                Err(e) => {
                    live.remove(&id);
                    outcome.site_errors.push((id, e));
                }
            }
        }
    }
    outcome.status = aggregator.status().clone();
    outcome.result = aggregator.result().cloned();
    Ok(outcome)
}

/// An advertisement of chosen keys, validly signed by `site`'s identity: what a
/// misbehaving site can send (tests of the aggregator's key checks).
pub fn signed_advertisement(
    config: &RoundConfig,
    site: SiteId,
    identity: &IdentityKeyPair,
    share_key: crate::crypto::AgreementPublicKey,
    mask_key: crate::crypto::AgreementPublicKey,
    self_mask_commitment: [u8; 32],
) -> crate::messages::KeyAdvertisement {
    let message = crate::protocol::advertisement_message(
        config,
        site,
        &share_key,
        &mask_key,
        &self_mask_commitment,
    );
    crate::messages::KeyAdvertisement {
        site,
        share_key,
        mask_key,
        self_mask_commitment,
        signature: identity.sign(&message),
    }
}

/// The randomness of one simulated site: ChaCha20 seeded from the run seed and its id.
pub fn site_rng(seed: [u8; 32], id: SiteId) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::from_seed(seed);
    rng.set_stream(u64::from(id.0));
    rng
}

/// Deterministic identities and a roster for `ids` (simulations and tests only).
pub fn test_identities(ids: &[SiteId], seed: [u8; 32]) -> (Vec<Arc<IdentityKeyPair>>, Arc<Roster>) {
    let identities: Vec<Arc<IdentityKeyPair>> = ids
        .iter()
        .map(|id| {
            let mut rng = site_rng(seed, *id);
            rng.set_word_pos(1 << 40);
            Arc::new(IdentityKeyPair::generate(&mut rng))
        })
        .collect();
    let roster = ids
        .iter()
        .zip(&identities)
        .map(|(id, k)| (*id, k.public()))
        .collect();
    (identities, Arc::new(roster))
}
