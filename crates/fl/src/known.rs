//! A deterministic trainer whose update is known in advance: every round it moves each
//! parameter by a fixed step. It stands in for the tch trainer when testing the
//! orchestration, so that the expected global model can be computed exactly.

use std::convert::Infallible;
use tessera_core::{
    LayoutError, LocalTrainer, LocalTrainingConfig, LocalUpdate, ParamKind, ParamLayout,
};

pub struct KnownUpdateTrainer {
    layout: ParamLayout,
    /// The model after the last round; `None` for a stateless trainer.
    params: Option<Vec<f32>>,
    dim: usize,
    step: f32,
    samples: u64,
}

impl KnownUpdateTrainer {
    /// A model of `dim` plain weights, starting at zero.
    pub fn new(dim: usize, step: f32, samples: u64) -> Result<Self, LayoutError> {
        let layout = Self::layout_for(dim)?;
        Ok(Self {
            layout,
            params: Some(vec![0.0; dim]),
            dim,
            step,
            samples,
        })
    }

    /// A trainer that keeps no model between rounds, for simulations of thousands of
    /// sites in one process (one model fewer per site). Its single entry is a weight,
    /// which every strategy federates, so a round starts from the global model and never
    /// from the site's own ([`crate::TrainRequest::run`] does not ask for it); its
    /// `parameters()` is therefore always its initial (zero) model.
    pub fn stateless(dim: usize, step: f32, samples: u64) -> Result<Self, LayoutError> {
        let mut t = Self::new(dim, step, samples)?;
        t.params = None;
        Ok(t)
    }

    /// The layout every participant of a known-update federation shares.
    pub fn layout_for(dim: usize) -> Result<ParamLayout, LayoutError> {
        ParamLayout::new(vec![(
            "weights".into(),
            vec![dim as i64],
            ParamKind::Weight,
        )])
    }
}

impl LocalTrainer for KnownUpdateTrainer {
    type Error = Infallible;

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn parameters(&self) -> Vec<f32> {
        self.params.clone().unwrap_or_else(|| vec![0.0; self.dim])
    }

    fn train(&mut self, start: &[f32], _: &LocalTrainingConfig) -> Result<LocalUpdate, Infallible> {
        let trained: Vec<f32> = start.iter().map(|p| p + self.step).collect();
        if let Some(params) = &mut self.params {
            params.clone_from(&trained);
        }
        Ok(LocalUpdate {
            parameters: trained,
            samples: self.samples,
            mean_loss: 0.0,
            patients: Vec::new(),
        })
    }
}

/// Patients whose known changes stand in for per-patient training: patient p moves
/// every parameter by `steps[p]` (the patient privacy unit's test double). Training the
/// whole site moves by the mean step.
pub struct KnownPatientTrainer {
    layout: ParamLayout,
    steps: Vec<f32>,
}

impl KnownPatientTrainer {
    pub fn new(dim: usize, steps: Vec<f32>) -> Result<Self, LayoutError> {
        Ok(Self {
            layout: KnownUpdateTrainer::layout_for(dim)?,
            steps,
        })
    }
}

impl LocalTrainer for KnownPatientTrainer {
    type Error = Infallible;

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn parameters(&self) -> Vec<f32> {
        vec![0.0; self.layout.len()]
    }

    fn train(&mut self, start: &[f32], _: &LocalTrainingConfig) -> Result<LocalUpdate, Infallible> {
        let mean = self.steps.iter().sum::<f32>() / self.steps.len().max(1) as f32;
        Ok(LocalUpdate {
            parameters: start.iter().map(|p| p + mean).collect(),
            samples: self.steps.len() as u64,
            mean_loss: 0.0,
            patients: Vec::new(),
        })
    }

    fn patients(&self) -> usize {
        self.steps.len()
    }

    fn train_patients(
        &mut self,
        start: &[f32],
        _: &LocalTrainingConfig,
        chosen: &[usize],
    ) -> Option<Result<Vec<Vec<f32>>, Infallible>> {
        Some(Ok(chosen
            .iter()
            .map(|&p| start.iter().map(|v| v + self.steps[p]).collect())
            .collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrainRequest;
    use tessera_core::Strategy;

    /// A stateless trainer gives every strategy's round the same update as one that keeps
    /// its model, since its only entry is a weight, which every strategy federates.
    #[test]
    fn a_stateless_trainer_trains_like_a_stateful_one() {
        let config = LocalTrainingConfig {
            steps: 1,
            batch_size: 1,
            learning_rate: 0.0,
            proximal_mu: 0.0,
            seed: 0,
        };
        for strategy in [Strategy::FedAvg, Strategy::FedBn] {
            let mut kept = KnownUpdateTrainer::new(5, 0.25, 3).unwrap();
            let mut stateless = KnownUpdateTrainer::stateless(5, 0.25, 3).unwrap();
            for round in 0..3u64 {
                let request = TrainRequest {
                    round,
                    global: std::sync::Arc::new(vec![round as f32; 5]),
                    strategy: strategy.clone(),
                    config: config.clone(),
                    private: round == 2,
                    patient_sampling: None,
                };
                let a = request.run(&mut kept).unwrap();
                let b = request.run(&mut stateless).unwrap();
                assert_eq!(a.parameters, b.parameters);
                assert_eq!(a.parameters, vec![round as f32 + 0.25; 5]);
            }
            assert_eq!(kept.parameters(), vec![2.25; 5]);
            assert_eq!(stateless.parameters(), vec![0.0; 5]);
        }
    }
}
