//! What a site's driver runs between the machine's [`crate::site::SiteAction::Train`]
//! and its [`crate::site::SiteEvent::Trained`]: local training, per site or per sampled
//! patient, and the encoding of its result for the round's codec.

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use std::borrow::Cow;
use std::sync::Arc;
use tessera_core::{LocalTrainer, LocalTrainingConfig, LocalUpdate, ParamLayout, Strategy};
use tessera_secagg::PlainVector;
use thiserror::Error;

use crate::site::SiteFailure;
use crate::wire::RoundStart;

/// Local training the driver must run: start from the global model merged into the
/// site's own (the strategy decides which entries stay local), then train.
#[derive(Clone, Debug)]
pub struct TrainRequest {
    pub round: u64,
    /// The round's global model, shared with the site machine (not copied).
    pub global: Arc<Vec<f32>>,
    pub strategy: Strategy,
    pub config: LocalTrainingConfig,
    /// A differentially private round: the site's normalisation statistics stay its own.
    pub private: bool,
    /// The patient privacy unit: the sampling rate and the site's secret seed for it.
    pub patient_sampling: Option<PatientSampling>,
}

/// A round's secret Poisson sample of a site's patients.
#[derive(Clone)]
pub struct PatientSampling {
    pub rate: f64,
    pub seed: zeroize::Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for PatientSampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientSampling")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl PatientSampling {
    /// Each of `patients` independently with probability `rate` (a uniform from the
    /// secret stream below the rate; the same seed gives the same sample).
    pub fn draw(&self, patients: usize) -> Vec<usize> {
        use rand_core::Rng;
        let mut rng = ChaCha20Rng::from_seed(*self.seed);
        (0..patients)
            .filter(|_| ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < self.rate)
            .collect()
    }
}

/// Why patient-level training could not run.
#[derive(Debug, Error)]
pub enum PatientTrainingError<E: std::error::Error + 'static> {
    #[error(
        "the round's privacy unit is the patient, but this site's trainer cannot train per patient"
    )]
    Unsupported,
    #[error(transparent)]
    Trainer(E),
}

impl TrainRequest {
    /// With the patient unit: samples the site's patients secretly and trains once per
    /// sampled patient; `parameters` is then the start and `patients` each one's result.
    pub fn run_patients<T: LocalTrainer>(
        &self,
        sampling: &PatientSampling,
        trainer: &mut T,
    ) -> Result<LocalUpdate, PatientTrainingError<T::Error>> {
        let chosen = sampling.draw(trainer.patients());
        let start = self.start(trainer);
        let patients = trainer
            .train_patients(&start, &self.config, &chosen)
            .ok_or(PatientTrainingError::Unsupported)?
            .map_err(PatientTrainingError::Trainer)?;
        Ok(LocalUpdate {
            parameters: start.into_owned(),
            samples: 1,
            mean_loss: 0.0,
            patients,
        })
    }

    /// Runs the request: per patient with the patient unit, otherwise [`Self::run`].
    pub fn run_any<T: LocalTrainer>(&self, trainer: &mut T) -> Result<LocalUpdate, String> {
        match &self.patient_sampling {
            Some(sampling) => self
                .run_patients(sampling, trainer)
                .map_err(|e| e.to_string()),
            None => self.run(trainer).map_err(|e| e.to_string()),
        }
    }

    pub fn run<T: LocalTrainer>(&self, trainer: &mut T) -> Result<LocalUpdate, T::Error> {
        let from = self.start(trainer);
        trainer.train(&from, &self.config)
    }

    /// Where training starts: the global model merged into the site's own (the strategy
    /// decides which entries stay local); the global model itself, uncopied, where every
    /// entry is federated.
    fn start<T: LocalTrainer>(&self, trainer: &T) -> Cow<'_, [f32]> {
        let layout = trainer.layout();
        // Where the strategy federates every entry, the site's own model plays no part.
        if layout
            .entries()
            .iter()
            .all(|e| self.strategy.is_federated(e.kind, self.private))
        {
            return Cow::Borrowed(self.global.as_slice());
        }
        let local = trainer.parameters();
        Cow::Owned(
            self.strategy
                .merge_into_local(layout, &local, &self.global, self.private),
        )
    }
}

/// Encodes a site's trained result for the round's codec: its update, weighted, or with
/// the patient unit each sampled patient's change (clipped one by one by the codec).
pub(crate) fn encode_update(
    start: &RoundStart,
    layout: &ParamLayout,
    update: LocalUpdate,
    rng: &mut ChaCha20Rng,
) -> Result<PlainVector, SiteFailure> {
    let private = start.is_private();
    let codec = start.codec.codec().map_err(SiteFailure::Encoding)?;
    if start.codec.patient_sampling().is_some() {
        let mut deltas = Vec::with_capacity(update.patients.len());
        for p in update.patients {
            layout.check(&p).map_err(SiteFailure::Model)?;
            if p.iter().any(|v| !v.is_finite()) {
                let e = "a patient's trained model holds non-finite values".to_string();
                return Err(SiteFailure::Training(e));
            }
            deltas.push(start.strategy.into_delta(layout, p, &start.global, private));
        }
        return codec
            .encode_contributions(&deltas, rng)
            .map_err(SiteFailure::Encoding);
    }
    // A codec whose largest weight is 1 means uniform weighting: every contributing site
    // counts once.
    let weight = if start.codec.max_weight() == 1 {
        update.samples.min(1)
    } else {
        update.samples
    };
    // The trained model's buffer becomes its delta, then its encoding: one model-sized
    // allocation per round instead of three.
    let delta = start
        .strategy
        .into_delta(layout, update.parameters, &start.global, private);
    codec
        .encode_owned(delta, weight, rng)
        .map_err(SiteFailure::Encoding)
}
