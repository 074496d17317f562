//! # tessera-core: the vocabulary shared by training and orchestration
//!
//! A model is federated as one flat `f32` vector whose [`ParamLayout`] names each
//! tensor, its shape and its kind, in a fixed order (sorted by name). Sites train
//! through [`LocalTrainer`] and send the change of their parameters, weighted by their
//! sample count; with secure aggregation the coordinator only ever learns the weighted
//! mean of those deltas, so an [`AggregationStrategy`] is defined on that mean alone.
//!
//! Strategies ([`Strategy`]):
//! - **FedAvg** (McMahan et al. 2017): global ← global + mean delta, i.e. the
//!   sample-weighted mean of the local models.
//! - **FedProx** (Li et al. 2020): FedAvg on the server; sites add (μ/2)‖w − w_global‖²
//!   to their local loss ([`LocalTrainingConfig::proximal_mu`]).
//! - **FedBN** (Li et al. 2021): normalisation parameters and statistics stay at each
//!   site; only the other entries are averaged ([`Strategy::is_federated`],
//!   [`Strategy::merge_into_local`]).
//! - **FedAvgM** (Hsu et al. 2019): server momentum v ← βv + mean delta,
//!   global ← global + η·v.
//!
//! Also here, because every crate needs exactly one of each: the seed derivation
//! ([`seed`]) and the atomic-write helper ([`atomic`]).
//!
//! No tch, no networking: this crate is arithmetic shared by `train`, `fl` and `exp`.

pub mod atomic;
mod layout;
pub mod seed;

pub use layout::{LayoutError, ParamEntry, ParamKind, ParamLayout};

use serde::{Deserialize, Serialize};

/// Local training settings sent with a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalTrainingConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// FedProx's μ; 0 disables the proximal term.
    pub proximal_mu: f64,
    /// Seed of this site's randomness for this round (batches, augmentation).
    pub seed: u64,
}

/// What a site's local training produced.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalUpdate {
    /// The trained parameters, in the layout's order.
    pub parameters: Vec<f32>,
    /// Weight of this site in the average (its training samples).
    pub samples: u64,
    /// Mean training loss over the local steps.
    pub mean_loss: f32,
    /// With the patient privacy unit: each sampled patient's parameters after training
    /// from the round's start on that patient's data alone (then `parameters` is the
    /// start). Empty otherwise.
    pub patients: Vec<Vec<f32>>,
}

/// Site-side training, implemented by the tch trainer and by test doubles.
pub trait LocalTrainer {
    type Error: std::error::Error + Send + Sync + 'static;

    fn layout(&self) -> &ParamLayout;

    /// The site's current parameters.
    fn parameters(&self) -> Vec<f32>;

    /// Trains from `start` (the global model merged into the local one).
    fn train(
        &mut self,
        start: &[f32],
        config: &LocalTrainingConfig,
    ) -> Result<LocalUpdate, Self::Error>;

    /// Patients this site holds, for the patient privacy unit (0: it has none).
    fn patients(&self) -> usize {
        0
    }

    /// Trains once for each patient in `chosen` (indices below [`Self::patients`]), from
    /// `start` on that patient's data alone, and returns each patient's parameters in
    /// `chosen`'s order. `None`: this trainer cannot train per patient.
    fn train_patients(
        &mut self,
        start: &[f32],
        config: &LocalTrainingConfig,
        chosen: &[usize],
    ) -> Option<Result<Vec<Vec<f32>>, Self::Error>> {
        let _ = (start, config, chosen);
        None
    }
}

/// One site's contribution in plain text: its delta and its weight.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteDelta {
    pub delta: Vec<f32>,
    pub weight: u64,
}

/// The sample-weighted mean of deltas (what secure aggregation computes, in the clear);
/// `None` without weight.
pub fn weighted_mean(deltas: &[SiteDelta]) -> Option<Vec<f32>> {
    let total: u64 = deltas.iter().map(|d| d.weight).sum();
    let len = deltas.first()?.delta.len();
    if total == 0 || deltas.iter().any(|d| d.delta.len() != len) {
        return None;
    }
    let mut acc = vec![0f64; len];
    for d in deltas {
        let w = d.weight as f64;
        for (a, x) in acc.iter_mut().zip(&d.delta) {
            *a += w * f64::from(*x);
        }
    }
    Some(acc.into_iter().map(|a| (a / total as f64) as f32).collect())
}

/// The coordinator's update rule, given only the weighted mean delta.
pub trait AggregationStrategy: Send {
    fn apply(&mut self, layout: &ParamLayout, global: &mut [f32], mean_delta: &[f32]);

    /// The rule's state between rounds (FedAvgM's velocity; empty for stateless rules),
    /// so that a checkpoint can restore it exactly.
    fn state(&self) -> Vec<f32> {
        Vec::new()
    }

    /// Restores what [`AggregationStrategy::state`] returned.
    fn restore(&mut self, _state: Vec<f32>) {}
}

/// The strategies researchers compare, as configured. Externally tagged, so that it
/// works in TOML (`strategy = "fedavg"`, `strategy = { fedprox = { mu = 0.01 } }`) and in
/// the compact binary wire format alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Strategy {
    FedAvg,
    FedProx { mu: f64 },
    FedBn,
    FedAvgM { server_lr: f32, momentum: f32 },
}

impl Strategy {
    /// Whether an entry of this kind travels to the coordinator. Under differential
    /// privacy (`private`) normalisation statistics never do, whatever the strategy:
    /// clipped and noised with the weights, a running variance can go negative and the
    /// model's outputs NaN; they stay at each site, as FedBN keeps them.
    pub fn is_federated(&self, kind: ParamKind, private: bool) -> bool {
        if private && kind == ParamKind::NormStatistic {
            return false;
        }
        !(matches!(self, Strategy::FedBn) && kind.is_normalisation())
    }

    /// The μ sites must use in their local loss.
    pub fn proximal_mu(&self) -> f64 {
        match self {
            Strategy::FedProx { mu } => *mu,
            _ => 0.0,
        }
    }

    /// A site's starting point for a round: federated entries from the global model,
    /// the others (FedBN's normalisation) from the site's own parameters.
    pub fn merge_into_local(
        &self,
        layout: &ParamLayout,
        local: &[f32],
        global: &[f32],
        private: bool,
    ) -> Vec<f32> {
        let mut out = global.to_vec();
        for e in layout.entries() {
            if !self.is_federated(e.kind, private) {
                out[e.offset..e.offset + e.len].copy_from_slice(&local[e.offset..e.offset + e.len]);
            }
        }
        out
    }

    /// A site's update for the coordinator: `trained − global` on federated entries,
    /// zero on the entries the strategy keeps local.
    pub fn delta(
        &self,
        layout: &ParamLayout,
        trained: &[f32],
        global: &[f32],
        private: bool,
    ) -> Vec<f32> {
        self.into_delta(layout, trained.to_vec(), global, private)
    }

    /// [`Self::delta`] computed in the trained model's own buffer, which is cut or padded
    /// with zeros to the layout's length (callers check models against the layout first).
    pub fn into_delta(
        &self,
        layout: &ParamLayout,
        mut trained: Vec<f32>,
        global: &[f32],
        private: bool,
    ) -> Vec<f32> {
        trained.resize(layout.len(), 0.0);
        for e in layout.entries() {
            let r = e.offset..e.offset + e.len;
            if self.is_federated(e.kind, private) {
                for (d, g) in trained[r.clone()].iter_mut().zip(&global[r]) {
                    *d -= g;
                }
            } else {
                trained[r].fill(0.0);
            }
        }
        trained
    }

    /// The strategy's configuration name, as in config files.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::FedAvg => "fedavg",
            Strategy::FedProx { .. } => "fedprox",
            Strategy::FedBn => "fedbn",
            Strategy::FedAvgM { .. } => "fedavgm",
        }
    }

    /// A new server-side state for this strategy; it changes only the entries sites
    /// federate (see [`Strategy::is_federated`]).
    pub fn server(&self, private: bool) -> Box<dyn AggregationStrategy> {
        let rule = (self.clone(), private);
        match self {
            Strategy::FedAvg | Strategy::FedProx { .. } | Strategy::FedBn => {
                Box::new(Additive { rule })
            }
            Strategy::FedAvgM {
                server_lr,
                momentum,
            } => Box::new(Momentum {
                rule,
                server_lr: *server_lr,
                momentum: *momentum,
                velocity: Vec::new(),
            }),
        }
    }
}

/// The strategy and whether the round is private: which entries are federated.
type Rule = (Strategy, bool);

fn federated(rule: &Rule, kind: ParamKind) -> bool {
    rule.0.is_federated(kind, rule.1)
}

struct Additive {
    rule: Rule,
}

impl AggregationStrategy for Additive {
    fn apply(&mut self, layout: &ParamLayout, global: &mut [f32], mean_delta: &[f32]) {
        for e in layout.entries() {
            if !federated(&self.rule, e.kind) {
                continue;
            }
            for (g, d) in global[e.offset..e.offset + e.len]
                .iter_mut()
                .zip(&mean_delta[e.offset..e.offset + e.len])
            {
                *g += d;
            }
        }
    }
}

struct Momentum {
    rule: Rule,
    server_lr: f32,
    momentum: f32,
    velocity: Vec<f32>,
}

impl AggregationStrategy for Momentum {
    fn apply(&mut self, layout: &ParamLayout, global: &mut [f32], mean_delta: &[f32]) {
        if self.velocity.len() != mean_delta.len() {
            self.velocity = vec![0.0; mean_delta.len()];
        }
        for e in layout.entries() {
            if !federated(&self.rule, e.kind) {
                continue;
            }
            let r = e.offset..e.offset + e.len;
            for ((g, v), d) in global[r.clone()]
                .iter_mut()
                .zip(&mut self.velocity[r.clone()])
                .zip(&mean_delta[r])
            {
                *v = self.momentum * *v + d;
                *g += self.server_lr * *v;
            }
        }
    }

    fn state(&self) -> Vec<f32> {
        self.velocity.clone()
    }

    fn restore(&mut self, state: Vec<f32>) {
        self.velocity = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ParamLayout {
        ParamLayout::new(vec![
            ("conv.weight".into(), vec![2, 2], ParamKind::Weight),
            ("bn.weight".into(), vec![2], ParamKind::NormAffine),
            ("bn.running_mean".into(), vec![2], ParamKind::NormStatistic),
        ])
        .unwrap()
    }

    #[test]
    fn layout_is_sorted_by_name_with_offsets() {
        let l = layout();
        let names: Vec<&str> = l.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["bn.running_mean", "bn.weight", "conv.weight"]);
        assert_eq!(l.entries()[2].offset, 4);
        assert_eq!(l.len(), 8);
        assert!(l.check(&[0.0; 7]).is_err());
        assert!(matches!(
            ParamLayout::new(vec![
                ("a".into(), vec![1], ParamKind::Weight),
                ("a".into(), vec![1], ParamKind::Weight)
            ]),
            Err(LayoutError::Duplicate(_))
        ));
    }

    /// Models as (site parameters, samples); deltas from a global model.
    fn fedavg_round(strategy: &Strategy, global: &[f32], sites: &[(Vec<f32>, u64)]) -> Vec<f32> {
        let l = layout();
        let deltas: Vec<SiteDelta> = sites
            .iter()
            .map(|(p, w)| SiteDelta {
                delta: p.iter().zip(global).map(|(a, b)| a - b).collect(),
                weight: *w,
            })
            .collect();
        let mean = weighted_mean(&deltas).unwrap();
        let mut g = global.to_vec();
        strategy.server(false).apply(&l, &mut g, &mean);
        g
    }

    #[test]
    fn fedavg_of_identical_models_is_the_identity() {
        let global = vec![0.5; 8];
        let model: Vec<f32> = (0..8).map(|i| i as f32 * 0.25).collect();
        let out = fedavg_round(
            &Strategy::FedAvg,
            &global,
            &[(model.clone(), 3), (model.clone(), 11)],
        );
        assert_eq!(out, model);
    }

    #[test]
    fn fedavg_of_two_sites_is_the_sample_weighted_mean() {
        let global = vec![0.0; 8];
        let a = vec![1.0; 8];
        let b = vec![4.0; 8];
        // weights 1 : 2 → (1 + 8) / 3 = 3
        let out = fedavg_round(&Strategy::FedAvg, &global, &[(a, 10), (b, 20)]);
        assert!(out.iter().all(|v| (v - 3.0).abs() < 1e-6), "{out:?}");
        assert_eq!(weighted_mean(&[]), None);
        assert_eq!(
            weighted_mean(&[SiteDelta {
                delta: vec![1.0],
                weight: 0
            }]),
            None
        );
    }

    #[test]
    fn fedbn_leaves_normalisation_untouched_everywhere() {
        let l = layout();
        let global = vec![0.0; 8];
        let out = fedavg_round(
            &Strategy::FedBn,
            &global,
            &[(vec![2.0; 8], 1), (vec![4.0; 8], 1)],
        );
        // bn entries (offsets 0..4) unchanged on the server, conv averaged
        assert_eq!(&out[..4], &[0.0; 4]);
        assert_eq!(&out[4..], &[3.0; 4]);
        // and a site keeps its own normalisation when it adopts the global model
        let local = vec![9.0; 8];
        let merged = Strategy::FedBn.merge_into_local(&l, &local, &out, false);
        assert_eq!(&merged[..4], &[9.0; 4]);
        assert_eq!(&merged[4..], &[3.0; 4]);
        // FedAvg adopts everything
        assert_eq!(
            Strategy::FedAvg.merge_into_local(&l, &local, &out, false),
            out
        );
        assert!(!Strategy::FedBn.is_federated(ParamKind::NormStatistic, false));
        assert!(Strategy::FedProx { mu: 0.01 }.is_federated(ParamKind::NormAffine, false));
    }

    #[test]
    fn fedavgm_accumulates_momentum() {
        let l = layout();
        let mut server = Strategy::FedAvgM {
            server_lr: 1.0,
            momentum: 0.5,
        }
        .server(false);
        let mut g = vec![0.0; 8];
        server.apply(&l, &mut g, &[1.0; 8]); // v = 1, g = 1
        server.apply(&l, &mut g, &[1.0; 8]); // v = 1.5, g = 2.5
        assert!(g.iter().all(|v| (v - 2.5).abs() < 1e-6));
        // with momentum 0 and lr 1 it is FedAvg
        let mut plain = Strategy::FedAvgM {
            server_lr: 1.0,
            momentum: 0.0,
        }
        .server(false);
        let mut h = vec![0.0; 8];
        plain.apply(&l, &mut h, &[1.0; 8]);
        plain.apply(&l, &mut h, &[1.0; 8]);
        assert_eq!(h, vec![2.0; 8]);
    }

    #[test]
    fn fedavgm_state_restores_exactly() {
        let l = layout();
        let strategy = Strategy::FedAvgM {
            server_lr: 0.7,
            momentum: 0.9,
        };
        let mut a = strategy.server(false);
        let mut g = vec![0.0; 8];
        a.apply(&l, &mut g, &[1.0; 8]);
        let mut b = strategy.server(false);
        b.restore(a.state());
        let mut ga = g.clone();
        a.apply(&l, &mut ga, &[0.5; 8]);
        b.apply(&l, &mut g, &[0.5; 8]);
        assert_eq!(ga, g);
        // without the restored velocity the result differs: the test has power
        let mut c = strategy.server(false);
        let mut gc = vec![0.7; 8];
        c.apply(&l, &mut gc, &[0.5; 8]);
        assert_ne!(gc, ga);
        assert!(Strategy::FedAvg.server(false).state().is_empty());
    }

    #[test]
    fn delta_is_zero_on_entries_kept_local() {
        let l = layout();
        let trained = vec![2.0; 8];
        let global = vec![0.5; 8];
        assert_eq!(
            Strategy::FedAvg.delta(&l, &trained, &global, false),
            vec![1.5; 8]
        );
        let fedbn = Strategy::FedBn.delta(&l, &trained, &global, false);
        assert_eq!(&fedbn[..4], &[0.0; 4]);
        assert_eq!(&fedbn[4..], &[1.5; 4]);
    }

    #[test]
    fn strategies_parse_from_config_and_reject_unknown_keys() {
        #[derive(Deserialize)]
        struct Config {
            strategy: Strategy,
        }
        let s = toml::from_str::<Config>("strategy = { fedprox = { mu = 0.01 } }")
            .unwrap()
            .strategy;
        assert_eq!(s, Strategy::FedProx { mu: 0.01 });
        assert_eq!(s.proximal_mu(), 0.01);
        assert_eq!(
            toml::from_str::<Config>("strategy = 'fedbn'")
                .unwrap()
                .strategy,
            Strategy::FedBn
        );
        let bad = "strategy = { fedavgm = { server_lr = 1.0, momentum = 0.9, beta = 1 } }";
        let err = toml::from_str::<Config>(bad).err().unwrap();
        assert!(
            err.to_string().contains("unexpected keys in table: beta"),
            "{err}"
        );
    }

    /// Under differential privacy normalisation statistics never travel, whatever the
    /// strategy: no delta, untouched by the server even where the noised mean has
    /// values, and each site keeps its own. (Without `private` they are federated.)
    #[test]
    fn private_rounds_keep_normalisation_statistics_local() {
        let l = layout(); // bn.running_mean at 0..2, bn.weight 2..4, conv 4..8
        let noisy_mean = vec![-5.0; 8];
        for strategy in [
            Strategy::FedAvg,
            Strategy::FedProx { mu: 0.1 },
            Strategy::FedAvgM {
                server_lr: 1.0,
                momentum: 0.9,
            },
        ] {
            let delta = strategy.delta(&l, &[2.0; 8], &[0.5; 8], true);
            assert_eq!(&delta[..2], &[0.0; 2], "{strategy:?}");
            assert_eq!(&delta[2..], &[1.5; 6], "{strategy:?}");
            let mut global = vec![1.0; 8];
            strategy.server(true).apply(&l, &mut global, &noisy_mean);
            assert_eq!(&global[..2], &[1.0; 2], "{strategy:?}");
            assert!(global[2..].iter().all(|g| *g < 0.0), "{strategy:?}");
            let merged = strategy.merge_into_local(&l, &[7.0; 8], &global, true);
            assert_eq!(&merged[..2], &[7.0; 2], "{strategy:?}");
            assert_eq!(&merged[2..], &global[2..], "{strategy:?}");
            // Not private: the statistics are federated like the rest.
            let mut open = vec![1.0; 8];
            strategy.server(false).apply(&l, &mut open, &noisy_mean);
            assert!(open[..2].iter().all(|g| *g < 0.0), "{strategy:?}");
        }
    }
}
