//! Round parameters and the communication graph they determine.
//!
//! Every party builds a [`RoundConfig`] from the same [`RoundParams`]; its SHA-256 digest
//! salts every key derivation and is inside every signature, so a server that hands
//! different parameters to different sites is caught at the first signature check.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use thiserror::Error;

use crate::crypto::{self, MaskPrg, Purpose};
use crate::ids::{Round, SessionId, SiteId};
use crate::ring::Modulus;

/// Which communication graph a round uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GraphSpec {
    /// SecAgg (Bonawitz et al. 2017): every site masks with and shares to every other.
    Complete,
    /// SecAgg+ (Bell et al. 2020): a uniformly random `degree`-regular graph drawn from
    /// public round randomness `seed` (and the rest of the parameters).
    RandomRegular { degree: u32, seed: [u8; 32] },
}

/// Everything the sites and the aggregator must agree on for one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundParams {
    pub session: SessionId,
    pub round: Round,
    /// The sites selected for this round, strictly increasing.
    pub participants: Vec<SiteId>,
    /// Length m of every input vector (including any weight limbs).
    pub vector_len: u32,
    pub modulus: Modulus,
    /// Shares needed to reconstruct a secret; each site's secrets are shared among its
    /// neighbours and itself.
    pub threshold: u32,
    pub graph: GraphSpec,
    /// Digest of everything else that shapes what a site sends (computed by the layer
    /// above: codec, noise, model, training, strategy). It is part of the parameters'
    /// digest, so sites that were shown different contexts cannot verify each other's
    /// signatures and the round fails instead of leaking. Zeros when unused.
    pub context: [u8; 32],
    /// The generator that expands mask seeds (every party must use the same one, so it
    /// is signed with the rest).
    pub mask_prg: MaskPrg,
}

/// Largest supported vector (2^28 elements, 1 GiB as `u32`).
pub const MAX_VECTOR_LEN: u32 = 1 << 28;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("a round needs at least 2 participants, got {0}")]
    TooFewParticipants(usize),
    #[error(
        "participants must be listed in strictly increasing order without repeats ({0} is out of place)"
    )]
    ParticipantsNotSorted(SiteId),
    #[error("vector length {0} is outside 1..={MAX_VECTOR_LEN}")]
    BadVectorLength(u32),
    #[error(
        "threshold {threshold} must be a strict majority of the {holders} holders of each site's shares \
         (between {min} and {holders})"
    )]
    BadThreshold {
        threshold: u32,
        holders: u32,
        min: u32,
    },
    #[error("graph degree {degree} must be between 1 and {max} (participants − 1)")]
    BadDegree { degree: u32, max: u32 },
    #[error("no {degree}-regular graph exists on {sites} sites (degree × sites must be even)")]
    OddDegreeSum { degree: u32, sites: u32 },
    #[error(
        "could not draw a random {degree}-regular graph on {sites} sites; choose another degree"
    )]
    GraphGenerationFailed { degree: u32, sites: u32 },
}

/// Validated round parameters, their digest and the communication graph.
/// Configs alive in this process, by digest (see [`RoundConfig::new`]).
static INTERNED: Mutex<Vec<([u8; 32], Weak<RoundConfig>)>> = Mutex::new(Vec::new());

#[derive(Debug)]
pub struct RoundConfig {
    params: RoundParams,
    digest: [u8; 32],
    graph: CommunicationGraph,
}

impl RoundConfig {
    pub fn new(params: RoundParams) -> Result<Arc<Self>, ConfigError> {
        let n = params.participants.len();
        if n < 2 {
            return Err(ConfigError::TooFewParticipants(n));
        }
        for w in params.participants.windows(2) {
            if w[0] >= w[1] {
                return Err(ConfigError::ParticipantsNotSorted(w[1]));
            }
        }
        if params.vector_len == 0 || params.vector_len > MAX_VECTOR_LEN {
            return Err(ConfigError::BadVectorLength(params.vector_len));
        }
        let n32 = n as u32;
        let holders = match params.graph {
            GraphSpec::Complete => n32,
            GraphSpec::RandomRegular { degree, .. } => {
                if degree == 0 || degree > n32 - 1 {
                    return Err(ConfigError::BadDegree {
                        degree,
                        max: n32 - 1,
                    });
                }
                if (u64::from(degree) * u64::from(n32)) % 2 == 1 {
                    return Err(ConfigError::OddDegreeSum { degree, sites: n32 });
                }
                degree + 1
            }
        };
        let min = holders / 2 + 1;
        if params.threshold < min || params.threshold > holders {
            return Err(ConfigError::BadThreshold {
                threshold: params.threshold,
                holders,
                min,
            });
        }
        let encoded = postcard::to_allocvec(&params).expect("round parameters always serialise");
        let digest = crypto::hash(Purpose::Parameters, &[0u8; 32], &[], &encoded);
        // Parties in one process (a simulation of thousands of sites) that build the
        // same parameters share one config: the SecAgg+ graph is O(n·k) to draw and to
        // hold, so one per site would make a simulation O(n²·k). The config is a pure
        // function of the parameters, so sharing it changes nothing they compute.
        let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        interned.retain(|(_, w)| w.strong_count() > 0);
        if let Some(config) = interned
            .iter()
            .filter(|(d, _)| *d == digest)
            .find_map(|(_, w)| w.upgrade().filter(|c| c.params == params))
        {
            return Ok(config);
        }
        let graph = CommunicationGraph::build(&params, &digest)?;
        let config = Arc::new(Self {
            params,
            digest,
            graph,
        });
        interned.push((digest, Arc::downgrade(&config)));
        Ok(config)
    }

    pub fn params(&self) -> &RoundParams {
        &self.params
    }

    /// SHA-256 digest of the parameters; binds every derivation and signature.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    pub fn graph(&self) -> &CommunicationGraph {
        &self.graph
    }

    pub fn threshold(&self) -> usize {
        self.params.threshold as usize
    }

    pub fn vector_len(&self) -> usize {
        self.params.vector_len as usize
    }

    pub fn modulus(&self) -> Modulus {
        self.params.modulus
    }

    pub fn is_participant(&self, id: SiteId) -> bool {
        self.params.participants.binary_search(&id).is_ok()
    }
}

/// The undirected graph along which sites mask and share.
#[derive(Debug)]
pub enum CommunicationGraph {
    Complete(Vec<SiteId>),
    Sparse(BTreeMap<SiteId, BTreeSet<SiteId>>),
}

impl CommunicationGraph {
    fn build(params: &RoundParams, digest: &[u8; 32]) -> Result<Self, ConfigError> {
        let sites = &params.participants;
        let n = sites.len();
        let (degree, seed) = match params.graph {
            GraphSpec::Complete => return Ok(Self::Complete(sites.clone())),
            GraphSpec::RandomRegular { degree, seed } => (degree as usize, seed),
        };
        if degree == n - 1 {
            return Ok(Self::Complete(sites.clone()));
        }
        let mut rng =
            ChaCha20Rng::from_seed(*crypto::derive_key(&seed, Purpose::Graph, digest, &[]));
        // Draw the sparser of the graph and its complement, then complement if needed.
        let complement = degree > (n - 1) / 2;
        let drawn = if complement { n - 1 - degree } else { degree };
        let adjacency =
            random_regular(n, drawn, &mut rng).ok_or(ConfigError::GraphGenerationFailed {
                degree: degree as u32,
                sites: n as u32,
            })?;
        let mut map = BTreeMap::new();
        for (i, neighbours) in adjacency.iter().enumerate() {
            let set: BTreeSet<SiteId> = if complement {
                (0..n)
                    .filter(|&j| j != i && !neighbours.contains(&j))
                    .map(|j| sites[j])
                    .collect()
            } else {
                neighbours.iter().map(|&j| sites[j]).collect()
            };
            map.insert(sites[i], set);
        }
        Ok(Self::Sparse(map))
    }

    /// The neighbours of `id` (not including `id`), ascending.
    pub fn neighbours(&self, id: SiteId) -> Vec<SiteId> {
        match self {
            Self::Complete(all) => all.iter().copied().filter(|&s| s != id).collect(),
            Self::Sparse(map) => map
                .get(&id)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        }
    }

    /// The sites holding shares of `id`'s secrets: its neighbours and itself, ascending.
    pub fn holders(&self, id: SiteId) -> Vec<SiteId> {
        let mut h = self.neighbours(id);
        let pos = h.partition_point(|&s| s < id);
        h.insert(pos, id);
        h
    }

    pub fn adjacent(&self, a: SiteId, b: SiteId) -> bool {
        match self {
            Self::Complete(all) => {
                a != b && all.binary_search(&a).is_ok() && all.binary_search(&b).is_ok()
            }
            Self::Sparse(map) => map.get(&a).is_some_and(|s| s.contains(&b)),
        }
    }
}

/// Uniform index in 0..n by rejection sampling (no modulo bias).
fn uniform_index(rng: &mut ChaCha20Rng, n: usize) -> usize {
    let n64 = n as u64;
    let zone = u64::MAX - (u64::MAX % n64);
    loop {
        let v = rng.next_u64();
        if v < zone {
            return (v % n64) as usize;
        }
    }
}

/// A random `d`-regular simple graph on `n` vertices by random pairing of vertex
/// "points" with rejection of loops and multi-edges (Steger–Wormald style), restarting
/// when the remaining points admit no valid pair.
fn random_regular(n: usize, d: usize, rng: &mut ChaCha20Rng) -> Option<Vec<BTreeSet<usize>>> {
    if d == 0 {
        return Some(vec![BTreeSet::new(); n]);
    }
    'attempt: for _ in 0..1000 {
        let mut points: Vec<usize> = (0..n).flat_map(|v| std::iter::repeat_n(v, d)).collect();
        let mut adjacency = vec![BTreeSet::new(); n];
        while !points.is_empty() {
            let mut paired = false;
            for _ in 0..(64 + 4 * points.len()) {
                let i = uniform_index(rng, points.len());
                let j = uniform_index(rng, points.len());
                let (a, b) = (points[i], points[j]);
                if i == j || a == b || adjacency[a].contains(&b) {
                    continue;
                }
                adjacency[a].insert(b);
                adjacency[b].insert(a);
                let (hi, lo) = if i > j { (i, j) } else { (j, i) };
                points.swap_remove(hi);
                points.swap_remove(lo);
                paired = true;
                break;
            }
            if !paired {
                continue 'attempt;
            }
        }
        return Some(adjacency);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n: u32, graph: GraphSpec, threshold: u32) -> RoundParams {
        RoundParams {
            session: SessionId([1; 16]),
            round: Round(3),
            participants: (0..n).map(SiteId).collect(),
            vector_len: 10,
            modulus: Modulus::new(16).unwrap(),
            threshold,
            graph,
            context: [0; 32],
            mask_prg: MaskPrg::default(),
        }
    }

    #[test]
    fn random_regular_graphs_are_regular_simple_symmetric_and_deterministic() {
        for (n, k) in [
            (10u32, 2u32),
            (11, 4),
            (50, 7 + 1),
            (64, 40),
            (101, 6),
            (30, 28),
        ] {
            let spec = GraphSpec::RandomRegular {
                degree: k,
                seed: [n as u8; 32],
            };
            let cfg = RoundConfig::new(params(n, spec.clone(), k / 2 + 1)).unwrap();
            let again = RoundConfig::new(params(n, spec, k / 2 + 1)).unwrap();
            for i in 0..n {
                let nb = cfg.graph().neighbours(SiteId(i));
                assert_eq!(nb.len(), k as usize, "n={n} k={k}");
                assert!(!nb.contains(&SiteId(i)));
                for j in &nb {
                    assert!(cfg.graph().adjacent(*j, SiteId(i)));
                }
                assert_eq!(nb, again.graph().neighbours(SiteId(i)));
                assert_eq!(cfg.graph().holders(SiteId(i)).len(), k as usize + 1);
            }
        }
    }

    #[test]
    fn different_seeds_give_different_graphs() {
        let a = RoundConfig::new(params(
            40,
            GraphSpec::RandomRegular {
                degree: 6,
                seed: [1; 32],
            },
            4,
        ))
        .unwrap();
        let b = RoundConfig::new(params(
            40,
            GraphSpec::RandomRegular {
                degree: 6,
                seed: [2; 32],
            },
            4,
        ))
        .unwrap();
        assert!(
            (0..40).any(|i| a.graph().neighbours(SiteId(i)) != b.graph().neighbours(SiteId(i)))
        );
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(
            RoundConfig::new(params(1, GraphSpec::Complete, 1)).unwrap_err(),
            ConfigError::TooFewParticipants(1)
        );
        assert_eq!(
            RoundConfig::new(params(10, GraphSpec::Complete, 5)).unwrap_err(),
            ConfigError::BadThreshold {
                threshold: 5,
                holders: 10,
                min: 6
            }
        );
        assert!(matches!(
            RoundConfig::new(params(
                9,
                GraphSpec::RandomRegular {
                    degree: 3,
                    seed: [0; 32]
                },
                3
            )),
            Err(ConfigError::OddDegreeSum { .. })
        ));
        assert!(matches!(
            RoundConfig::new(params(
                9,
                GraphSpec::RandomRegular {
                    degree: 9,
                    seed: [0; 32]
                },
                6
            )),
            Err(ConfigError::BadDegree { .. })
        ));
        let mut p = params(4, GraphSpec::Complete, 3);
        p.participants = vec![SiteId(0), SiteId(2), SiteId(2), SiteId(5)];
        assert_eq!(
            RoundConfig::new(p).unwrap_err(),
            ConfigError::ParticipantsNotSorted(SiteId(2))
        );
        let mut p = params(4, GraphSpec::Complete, 3);
        p.vector_len = 0;
        assert_eq!(
            RoundConfig::new(p).unwrap_err(),
            ConfigError::BadVectorLength(0)
        );
    }

    #[test]
    fn digest_changes_with_any_parameter() {
        let a = RoundConfig::new(params(5, GraphSpec::Complete, 3)).unwrap();
        let mut p = params(5, GraphSpec::Complete, 3);
        p.round = Round(4);
        let b = RoundConfig::new(p).unwrap();
        let c = RoundConfig::new(params(5, GraphSpec::Complete, 4)).unwrap();
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        // The mask generator is signed too: a site told another one cannot verify.
        // Equal parameters give one shared config; others their own.
        let again = RoundConfig::new(params(5, GraphSpec::Complete, 3)).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!Arc::ptr_eq(&a, &c));
        let mut p = params(5, GraphSpec::Complete, 3);
        p.mask_prg = MaskPrg::ChaCha20;
        let d = RoundConfig::new(p).unwrap();
        assert_ne!(a.digest(), d.digest());
    }
}
