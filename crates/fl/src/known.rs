//! A deterministic trainer whose update is known in advance: every round it moves each
//! parameter by a fixed step. It stands in for the tch trainer when testing the
//! orchestration, so that the expected global model can be computed exactly.

use std::convert::Infallible;
use tessera_core::{
    LayoutError, LocalTrainer, LocalTrainingConfig, LocalUpdate, ParamKind, ParamLayout,
};

pub struct KnownUpdateTrainer {
    layout: ParamLayout,
    params: Vec<f32>,
    step: f32,
    samples: u64,
}

impl KnownUpdateTrainer {
    /// A model of `dim` plain weights, starting at zero.
    pub fn new(dim: usize, step: f32, samples: u64) -> Result<Self, LayoutError> {
        let layout = Self::layout_for(dim)?;
        Ok(Self {
            layout,
            params: vec![0.0; dim],
            step,
            samples,
        })
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
        self.params.clone()
    }

    fn train(&mut self, start: &[f32], _: &LocalTrainingConfig) -> Result<LocalUpdate, Infallible> {
        self.params = start.iter().map(|p| p + self.step).collect();
        Ok(LocalUpdate {
            parameters: self.params.clone(),
            samples: self.samples,
            mean_loss: 0.0,
        })
    }
}
