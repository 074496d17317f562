//! Private fine-tuning: a detector pretrained on a public cohort keeps its backbone and
//! pyramid frozen, and only its heads, or only their output layers ([`Trainable`]), are
//! trained — per site, or once per sampled patient for the patient privacy unit. Fewer private coordinates mean less noise in
//! norm for the same guarantee, and the public model is a useful start at any ε.
//!
//! The frozen part runs once, in evaluation mode (its public normalisation statistics),
//! and each patient's stride-4 features are cached, so a step runs the heads only. The
//! heads have no normalisation layers, so nothing private is kept outside the vector.
//! Adam is written out here over the head tensors (fresh for every patient and round),
//! with the gradient's global L2 norm clipped before each step.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tessera_core::{LocalTrainer, LocalTrainingConfig, LocalUpdate, ParamLayout};

use crate::loss::{Example, Targets, losses};
use crate::model::{Detector, DetectorConfig, Trainable};
use crate::params::{flatten, layout_of, unflatten};
use crate::torch_state::{ThreadLease, torch_rng};
use crate::trainer::TrainError;

/// Slices per forward pass of the frozen part.
const FEATURE_BATCH: usize = 32;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// One patient's cached features and targets.
struct Cached {
    features: Tensor,
    targets: Targets,
    rows: i64,
}

/// A site's detector for private fine-tuning (CPU).
pub struct FineTuner {
    vs: VarStore,
    net: Detector,
    full: ParamLayout,
    layout: ParamLayout,
    heads: Vec<Tensor>,
    patients: Vec<Cached>,
    grad_clip_norm: f64,
    threads: i32,
}

impl std::fmt::Debug for FineTuner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FineTuner")
            .field("heads", &self.layout.len())
            .field("patients", &self.patients.len())
            .finish_non_exhaustive()
    }
}

impl FineTuner {
    /// The public model `public` (every variable, in the full layout's order) with the
    /// site's patients' examples, whose features are computed once here.
    pub fn new(
        model: &DetectorConfig,
        public: &[f32],
        patients: Vec<Vec<Example>>,
        trainable: Trainable,
        threads: i32,
    ) -> Result<Self, TrainError> {
        if model.head != crate::model::HeadKind::Centre {
            return Err(TrainError::Unsupported(
                "private fine-tuning trains the centre heads; the RetinaNet head is not supported"
                    .into(),
            ));
        }
        let _threads = ThreadLease::acquire(threads);
        let mut vs = VarStore::new(Device::Cpu);
        // Its random initial weights are overwritten below, but drawing them moves
        // libtorch's one generator: under its lock, not inside another trainer's draws.
        let net = {
            let _rng = torch_rng();
            Detector::new(&vs.root(), model)
        };
        let full = layout_of(&vs)?;
        unflatten(&mut vs, &full, public)?;
        let head_entries = full
            .entries()
            .iter()
            .filter(|e| trainable.includes(&e.name))
            .map(|e| (e.name.clone(), e.shape.clone(), e.kind))
            .collect();
        let layout = ParamLayout::new(head_entries)?;
        let vars = vs.variables();
        let heads = layout
            .entries()
            .iter()
            .map(|e| vars[&e.name].shallow_clone())
            .collect();
        let cached = patients
            .iter()
            .map(|examples| cache(&net, examples, model.input_size))
            .collect();
        Ok(Self {
            vs,
            net,
            full,
            layout,
            heads,
            patients: cached,
            grad_clip_norm: 1.0,
            threads,
        })
    }

    /// The full model: the public backbone and pyramid with these heads.
    pub fn full_model(&mut self, heads: &[f32]) -> Result<Vec<f32>, TrainError> {
        unflatten(&mut self.vs, &self.layout, heads)?;
        Ok(flatten(&self.vs, &self.full))
    }

    /// Rows of `patient`'s cache as one batch.
    fn gather(&self, picks: &[(usize, i64)]) -> (Tensor, Targets) {
        let xs: Vec<Tensor> = picks
            .iter()
            .map(|&(p, r)| self.patients[p].features.narrow(0, r, 1))
            .collect();
        let ts: Vec<Targets> = picks
            .iter()
            .map(|&(p, r)| self.patients[p].targets.select(&[r]))
            .collect();
        (Tensor::cat(&xs, 0), Targets::cat(&ts))
    }

    /// Adam on the heads from `start` for `cfg.steps` batches chosen by `pick`; returns
    /// the heads after and the mean loss.
    fn adam(
        &mut self,
        start: &[f32],
        cfg: &LocalTrainingConfig,
        mut pick: impl FnMut(&mut ChaCha20Rng) -> Vec<(usize, i64)>,
        rng: &mut ChaCha20Rng,
    ) -> Result<(Vec<f32>, f64), TrainError> {
        unflatten(&mut self.vs, &self.layout, start)?;
        let zeros = |t: &Tensor| t.zeros_like();
        let mut m: Vec<Tensor> = self.heads.iter().map(zeros).collect();
        let mut v: Vec<Tensor> = self.heads.iter().map(zeros).collect();
        let mut loss_sum = 0.0;
        for step in 1..=cfg.steps {
            let picks = pick(rng);
            if picks.is_empty() {
                break;
            }
            let (x, targets) = self.gather(&picks);
            let loss = losses(&self.net.heads(&x, true), &targets).total;
            loss_sum += loss.double_value(&[]);
            let grads = Tensor::run_backward(&[&loss], &self.heads, false, false);
            let norm = grads
                .iter()
                .map(|g| g.square().sum(Kind::Double).double_value(&[]))
                .sum::<f64>()
                .sqrt();
            let scale = if norm > self.grad_clip_norm {
                self.grad_clip_norm / norm
            } else {
                1.0
            };
            let (c1, c2) = (1.0 - BETA1.powi(step as i32), 1.0 - BETA2.powi(step as i32));
            tch::no_grad(|| {
                for (((w, g), m), v) in self.heads.iter_mut().zip(&grads).zip(&mut m).zip(&mut v) {
                    let g = g * scale;
                    *m = &*m * BETA1 + &g * (1.0 - BETA1);
                    *v = &*v * BETA2 + g.square() * (1.0 - BETA2);
                    let step = (&*m / c1) / ((&*v / c2).sqrt() + ADAM_EPS) * cfg.learning_rate;
                    let _ = w.f_sub_(&step);
                }
            });
        }
        Ok((
            flatten(&self.vs, &self.layout),
            loss_sum / cfg.steps.max(1) as f64,
        ))
    }
}

/// A patient's features from the frozen part (evaluation mode) and its targets.
fn cache(net: &Detector, examples: &[Example], size: i64) -> Cached {
    let targets = Targets::build(examples, size).without_images();
    let features = tch::no_grad(|| {
        let chunks: Vec<Tensor> = examples
            .chunks(FEATURE_BATCH)
            .map(|chunk| {
                let images = Targets::build(chunk, size).images;
                net.features(&images, false)
            })
            .collect();
        if chunks.is_empty() {
            Tensor::zeros([0], (Kind::Float, Device::Cpu))
        } else {
            Tensor::cat(&chunks, 0)
        }
    });
    Cached {
        features,
        targets,
        rows: examples.len() as i64,
    }
}

fn below(rng: &mut ChaCha20Rng, n: i64) -> i64 {
    (rng.next_u64() % n as u64) as i64
}

impl LocalTrainer for FineTuner {
    type Error = TrainError;

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn parameters(&self) -> Vec<f32> {
        flatten(&self.vs, &self.layout)
    }

    /// Without DP (or with the site unit): the heads on batches drawn uniformly from
    /// all of the site's cached slices.
    fn train(
        &mut self,
        start: &[f32],
        cfg: &LocalTrainingConfig,
    ) -> Result<LocalUpdate, TrainError> {
        let _threads = ThreadLease::acquire(self.threads);
        let index: Vec<(usize, i64)> = self
            .patients
            .iter()
            .enumerate()
            .flat_map(|(p, c)| (0..c.rows).map(move |r| (p, r)))
            .collect();
        if index.is_empty() {
            return Err(TrainError::NoData);
        }
        let batch = cfg.batch_size.max(1);
        let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
        let pick = |rng: &mut ChaCha20Rng| {
            (0..batch)
                .map(|_| index[below(rng, index.len() as i64) as usize])
                .collect()
        };
        let (parameters, loss) = self.adam(start, cfg, pick, &mut rng)?;
        Ok(LocalUpdate {
            parameters,
            samples: index.len() as u64,
            mean_loss: loss as f32,
            patients: Vec::new(),
        })
    }

    fn patients(&self) -> usize {
        self.patients.len()
    }

    /// Each chosen patient: the heads trained from `start` on that patient's slices
    /// alone (batches drawn with replacement).
    fn train_patients(
        &mut self,
        start: &[f32],
        cfg: &LocalTrainingConfig,
        chosen: &[usize],
    ) -> Option<Result<Vec<Vec<f32>>, TrainError>> {
        let _threads = ThreadLease::acquire(self.threads);
        let batch = cfg.batch_size.max(1);
        let run = |me: &mut Self| {
            let mut out = Vec::with_capacity(chosen.len());
            for &p in chosen {
                let rows = me.patients.get(p).map_or(0, |c| c.rows);
                let seed = cfg.seed ^ (p as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut rng = ChaCha20Rng::seed_from_u64(seed);
                let pick = |rng: &mut ChaCha20Rng| {
                    if rows == 0 {
                        return Vec::new();
                    }
                    (0..batch).map(|_| (p, below(rng, rows))).collect()
                };
                out.push(me.adam(start, cfg, pick, &mut rng)?.0);
            }
            unflatten(&mut me.vs, &me.layout, start)?;
            Ok(out)
        };
        Some(run(self))
    }
}
