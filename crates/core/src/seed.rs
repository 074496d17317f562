//! One derivation for every seed in Tessera.
//!
//! A seed is never built by copying ids into bytes: each is
//! HMAC-SHA256(root, label ‖ purpose ‖ session ‖ site ‖ round), with every field
//! length-prefixed or fixed-width and an absent site or round encoded distinctly from
//! any value. Different roots, purposes, sessions, sites or rounds therefore give
//! unrelated seeds, and no two purposes ever share a stream.
//!
//! Public round randomness (site selection, the SecAgg+ graph, the DP rotation) uses
//! [`RootSeed::PUBLIC`]: anyone who knows the session can recompute it, which is the
//! point. Secret randomness uses a site's own root.

use ring::hmac;
use serde::{Deserialize, Serialize};

/// What a derived seed is for; each purpose is its own domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Purpose {
    /// A simulated site's root seed, derived from an experiment's root.
    SiteRoot,
    /// A simulated site's long-term identity (signing) key.
    Identity,
    /// Key generation and share randomness of one secure-aggregation round.
    SecAgg,
    /// Stochastic rounding and the site's DP noise share in one round.
    Encoding,
    /// The coordinator's own noise (central DP).
    CentralNoise,
    /// Which sites take part in a round (public).
    Selection,
    /// The SecAgg+ communication graph (public).
    Graph,
    /// The randomised Hadamard rotation of the DP codec (public).
    Rotation,
    /// Local training: batch order and augmentation.
    Training,
    /// Simulated dropouts.
    Dropout,
    /// Synthetic task values (a test model's updates, a simulation's weights).
    Workload,
    /// A simulated federation's session id.
    Session,
    /// Privacy-audit canaries: their directions and secret inclusion coins.
    Canary,
    /// A site's secret Poisson sample of its patients (the patient privacy unit).
    Sampling,
}

impl Purpose {
    /// Every purpose (for tests that check they are distinct).
    pub const ALL: [Purpose; 14] = [
        Purpose::SiteRoot,
        Purpose::Identity,
        Purpose::SecAgg,
        Purpose::Encoding,
        Purpose::CentralNoise,
        Purpose::Selection,
        Purpose::Graph,
        Purpose::Rotation,
        Purpose::Training,
        Purpose::Dropout,
        Purpose::Workload,
        Purpose::Session,
        Purpose::Canary,
        Purpose::Sampling,
    ];

    fn label(self) -> &'static [u8] {
        match self {
            Purpose::SiteRoot => b"site-root",
            Purpose::Identity => b"identity",
            Purpose::SecAgg => b"secagg",
            Purpose::Encoding => b"encoding",
            Purpose::CentralNoise => b"central-noise",
            Purpose::Selection => b"selection",
            Purpose::Graph => b"graph",
            Purpose::Rotation => b"rotation",
            Purpose::Training => b"training",
            Purpose::Dropout => b"dropout",
            Purpose::Workload => b"workload",
            Purpose::Session => b"session",
            Purpose::Canary => b"canary",
            Purpose::Sampling => b"sampling",
        }
    }
}

/// The secret (or, for [`RootSeed::PUBLIC`], public) root every seed derives from.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSeed([u8; 32]);

impl zeroize::Zeroize for RootSeed {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for RootSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootSeed(…)")
    }
}

/// Where in a federation a seed is used: the session, and optionally a site and round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedContext {
    pub session: [u8; 16],
    pub site: Option<u32>,
    pub round: Option<u64>,
}

impl SeedContext {
    pub fn session(session: [u8; 16]) -> Self {
        Self {
            session,
            site: None,
            round: None,
        }
    }

    pub fn site(mut self, site: u32) -> Self {
        self.site = Some(site);
        self
    }

    pub fn round(mut self, round: u64) -> Self {
        self.round = Some(round);
        self
    }
}

impl RootSeed {
    /// The root of public randomness: derived seeds are known to everyone.
    pub const PUBLIC: RootSeed = RootSeed([0; 32]);

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The root of an experiment or simulation run with a numeric seed.
    pub fn from_experiment(seed: u64) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"tessera/experiment-seed/v1");
        Self(tag_bytes(hmac::sign(&key, &seed.to_le_bytes())))
    }

    /// Fresh randomness from the operating system.
    pub fn from_os() -> Result<Self, ring::error::Unspecified> {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
        Ok(Self(bytes))
    }

    /// The seed for `purpose` at `context`.
    pub fn derive(&self, purpose: Purpose, context: SeedContext) -> [u8; 32] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(b"tessera/seed/v1");
        let label = purpose.label();
        ctx.update(&[label.len() as u8]);
        ctx.update(label);
        ctx.update(&context.session);
        match context.site {
            Some(s) => {
                ctx.update(&[1]);
                ctx.update(&s.to_le_bytes());
            }
            None => ctx.update(&[0]),
        }
        match context.round {
            Some(r) => {
                ctx.update(&[1]);
                ctx.update(&r.to_le_bytes());
            }
            None => ctx.update(&[0]),
        }
        tag_bytes(ctx.sign())
    }

    /// A simulated site's own root, derived from an experiment's root. It does not
    /// depend on the session (every seed derived from it does), so a site process given
    /// the experiment's seed derives the same randomness as the in-process simulation.
    pub fn site_root(&self, site: u32) -> RootSeed {
        RootSeed(self.derive(Purpose::SiteRoot, SeedContext::session([0; 16]).site(site)))
    }

    /// The session id of simulated federations run from this root.
    pub fn session(&self) -> [u8; 16] {
        let bytes = self.derive(Purpose::Session, SeedContext::session([0; 16]));
        let mut session = [0u8; 16];
        session.copy_from_slice(&bytes[..16]);
        session
    }

    /// A 64-bit seed for libraries that take one (e.g. torch's manual seed).
    pub fn derive_u64(&self, purpose: Purpose, context: SeedContext) -> u64 {
        let bytes = self.derive(purpose, context);
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[..8]);
        u64::from_le_bytes(word)
    }
}

fn tag_bytes(tag: hmac::Tag) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The bug this module replaces: site seeds built by writing the site id over the
    /// experiment seed made every seed below 2^32 give every site the same randomness.
    #[test]
    fn different_experiment_seeds_give_different_site_randomness() {
        let session = [7; 16];
        let mut seen = BTreeSet::new();
        for seed in [0u64, 1, 2, 3, 7, 2021, u64::from(u32::MAX) + 1] {
            let root = RootSeed::from_experiment(seed);
            for site in 0..4 {
                let site_root = root.site_root(site);
                let ctx = SeedContext::session(session).site(site).round(1);
                assert!(seen.insert(site_root.derive(Purpose::SecAgg, ctx)));
                assert!(seen.insert(site_root.derive(Purpose::Encoding, ctx)));
            }
        }
    }

    #[test]
    fn no_two_purposes_or_contexts_share_a_stream() {
        let root = RootSeed::from_experiment(3);
        let mut seen = BTreeSet::new();
        let contexts = [
            SeedContext::session([0; 16]),
            SeedContext::session([0; 16]).site(0),
            SeedContext::session([0; 16]).round(0),
            SeedContext::session([0; 16]).site(0).round(0),
            SeedContext::session([0; 16]).site(1).round(0),
            SeedContext::session([0; 16]).site(0).round(1),
            SeedContext::session([1; 16]).site(0).round(0),
        ];
        for purpose in Purpose::ALL {
            for ctx in contexts {
                assert!(
                    seen.insert(root.derive(purpose, ctx)),
                    "{purpose:?} {ctx:?}"
                );
                assert!(seen.insert(RootSeed::PUBLIC.derive(purpose, ctx)));
            }
        }
        // Deterministic: the same inputs give the same seed.
        let ctx = contexts[3];
        assert_eq!(
            root.derive(Purpose::Graph, ctx),
            root.derive(Purpose::Graph, ctx)
        );
    }
}
