//! Canary sites for an empirical privacy audit in one training run
//! (`tessera_dp::audit`). Each canary has its own random direction over the entries
//! that travel and a secret coin: "in", it sends that direction scaled to the clip
//! every round, the largest update the privacy unit (a site) may send; "out", it sends
//! a zero update — the neighbour under zero-out adjacency, which is what the ledger
//! accounts. The auditor sees what the coordinator publishes, the global model after
//! each round, and scores each canary by its direction's inner product with the
//! model's movement summed over rounds.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::convert::Infallible;
use std::sync::Arc;
use tessera_core::{LocalTrainer, LocalTrainingConfig, LocalUpdate, ParamLayout, Strategy};

/// The canaries of one run: directions and coins.
pub struct Canaries {
    layout: ParamLayout,
    directions: Vec<Arc<Vec<f32>>>,
    included: Vec<bool>,
    norm: f32,
}

/// A standard normal draw (Box–Muller) from `rng`.
fn normal(rng: &mut ChaCha20Rng) -> f32 {
    let unit = |rng: &mut ChaCha20Rng| ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let (u1, u2) = (unit(rng), unit(rng));
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

impl Canaries {
    /// `m` canaries over `layout`'s entries that `strategy` federates (under DP when
    /// `private`), each update of L2 norm `norm`; directions and coins from `seed`.
    pub fn new(
        layout: &ParamLayout,
        m: usize,
        norm: f32,
        strategy: &Strategy,
        private: bool,
        seed: [u8; 32],
    ) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let federated: Vec<bool> = {
            let mut mask = vec![false; layout.len()];
            for e in layout.entries() {
                if strategy.is_federated(e.kind, private) {
                    mask[e.offset..e.offset + e.len].fill(true);
                }
            }
            mask
        };
        let mut directions = Vec::with_capacity(m);
        let mut included = Vec::with_capacity(m);
        for _ in 0..m {
            included.push(rng.next_u32() & 1 == 1);
            let mut d: Vec<f32> = federated
                .iter()
                .map(|&f| if f { normal(&mut rng) } else { 0.0 })
                .collect();
            let length = d
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
                .max(f32::MIN_POSITIVE);
            d.iter_mut().for_each(|v| *v /= length);
            directions.push(Arc::new(d));
        }
        Self {
            layout: layout.clone(),
            directions,
            included,
            norm,
        }
    }

    /// One trainer per canary, in order (they join the federation as sites).
    pub fn trainers(&self) -> Vec<CanaryTrainer> {
        self.directions
            .iter()
            .zip(&self.included)
            .map(|(d, &included)| CanaryTrainer {
                layout: self.layout.clone(),
                direction: d.clone(),
                step: if included { self.norm } else { 0.0 },
            })
            .collect()
    }

    /// Which canaries were in (the auditor's secret).
    pub fn included(&self) -> &[bool] {
        &self.included
    }

    pub fn len(&self) -> usize {
        self.directions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.directions.is_empty()
    }

    /// Each canary's score: its direction's inner product with the global model's
    /// movement, summed over `movements` (one per round).
    pub fn scores(&self, movements: &[Vec<f32>]) -> Vec<f64> {
        self.directions
            .iter()
            .map(|d| {
                movements
                    .iter()
                    .map(|m| {
                        m.iter()
                            .zip(d.iter())
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum::<f64>()
                    })
                    .sum()
            })
            .collect()
    }
}

/// A canary site: every round it moves the model by its direction times its step
/// (the clip when in, zero when out), with one sample (uniform weighting).
pub struct CanaryTrainer {
    layout: ParamLayout,
    direction: Arc<Vec<f32>>,
    step: f32,
}

impl LocalTrainer for CanaryTrainer {
    type Error = Infallible;

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn parameters(&self) -> Vec<f32> {
        vec![0.0; self.layout.len()]
    }

    fn train(&mut self, start: &[f32], _: &LocalTrainingConfig) -> Result<LocalUpdate, Infallible> {
        Ok(LocalUpdate {
            parameters: start
                .iter()
                .zip(self.direction.iter())
                .map(|(p, d)| p + self.step * d)
                .collect(),
            samples: 1,
            mean_loss: 0.0,
            patients: Vec::new(),
        })
    }
}
