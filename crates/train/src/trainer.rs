//! Local training and inference through one interface, for the native detector and for
//! TorchScript models.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, IValue, Kind, Tensor};
use tessera_core::{LayoutError, LocalTrainer, LocalTrainingConfig, LocalUpdate, ParamLayout};
use tessera_data::{Scan, SliceSpec, Volume, slices};
use tessera_eval::Detection;
use thiserror::Error;

use crate::augment::{Augmentation, augment};
use crate::loss::{DecodeConfig, Example, Targets, decode, losses, score_maps};
use crate::model::{Detector, DetectorConfig, DetectorNet, HeadOutputs, STRIDE};
use crate::params::{flatten, layout_of, unflatten};
use crate::retina::RetinaOutputs;
use crate::torch_state::{ThreadLease, torch_rng};

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(
        "{path}: TorchScript model must return a tuple (heatmap [B,1,H/4,W/4], boxes [B,4,H/4,W/4], mask [B,1,H/4,W/4]); {detail}"
    )]
    Contract { path: String, detail: String },
    #[error("the site has no training examples")]
    NoData,
    #[error("input size {0} is not a positive multiple of 32")]
    InputSize(i64),
    #[error("{0}")]
    Unsupported(String),
    /// Never scored as "no detections": a model that outputs NaN or ±∞ (for instance a
    /// negative batch-norm variance) is an error, reported as such.
    #[error("the model's outputs are not finite ({0} of {1} heatmap values)")]
    NonFiniteOutput(usize, usize),
}

/// How a site trains, beyond the round's [`LocalTrainingConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerConfig {
    /// libtorch intra-op threads; set explicitly so that sites sharing a machine do not
    /// oversubscribe it (and so that results are reproducible).
    pub threads: i32,
    /// `None` disables augmentation.
    pub augmentation: Option<Augmentation>,
    /// Gradients are rescaled to at most this L2 norm before each Adam step.
    pub grad_clip_norm: f64,
    pub cuda: bool,
    /// Keep Adam's moment estimates from one `train` call (round) to the next, as the
    /// study's Keras clients do; otherwise every round starts a fresh Adam.
    pub keep_optimizer_state: bool,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            threads: 2,
            augmentation: Some(Augmentation::STUDY),
            grad_clip_norm: 1.0,
            cuda: false,
            keep_optimizer_state: false,
        }
    }
}

/// A TorchScript detector exported from PyTorch (`torch.jit.save`) whose `forward`
/// maps [B, 3, H, W] to the tuple (heatmap, boxes, mask) of [`HeadOutputs`].
pub struct TorchScriptNet {
    module: tch::TrainableCModule,
    path: String,
}

impl TorchScriptNet {
    fn outputs(&self, images: &Tensor) -> Result<HeadOutputs, TrainError> {
        let contract = |detail: String| TrainError::Contract {
            path: self.path.clone(),
            detail,
        };
        let out = self
            .module
            .forward_is(&[IValue::Tensor(images.shallow_clone())])?;
        let IValue::Tuple(items) = out else {
            return Err(contract("forward returned something else".into()));
        };
        let mut tensors = items.into_iter().map(|v| match v {
            IValue::Tensor(t) => Ok(t),
            _ => Err(contract("a tuple element is not a tensor".into())),
        });
        let mut next = || {
            tensors
                .next()
                .ok_or_else(|| contract("the tuple has fewer than 3 tensors".into()))?
        };
        let (heatmap, boxes, mask) = (next()?, next()?, next()?);
        let [b, _, h, w] =
            <[i64; 4]>::try_from(images.size()).map_err(|_| contract("input is not 4D".into()))?;
        for (name, t, c) in [
            ("heatmap", &heatmap, 1),
            ("boxes", &boxes, 4),
            ("mask", &mask, 1),
        ] {
            if t.size() != [b, c, h / STRIDE, w / STRIDE] {
                return Err(contract(format!("{name} has shape {:?}", t.size())));
            }
        }
        Ok(HeadOutputs {
            heatmap,
            boxes,
            mask,
            retina: None,
        })
    }
}

enum Network {
    Native(Box<Detector>),
    TorchScript(TorchScriptNet),
}

/// Per-image outputs of [`DetectorTrainer::predict`].
#[derive(Clone, Debug, PartialEq)]
pub struct Predictions {
    /// Boxes in input pixels with scores, after NMS and nested-box removal.
    pub detections: Vec<Vec<Detection>>,
    /// Lesion-score maps at the input size, row-major.
    pub scores: Vec<Vec<f32>>,
}

/// A site's model, its training examples and its optimiser settings.
pub struct DetectorTrainer {
    vs: VarStore,
    network: Network,
    layout: ParamLayout,
    examples: Vec<Example>,
    size: i64,
    config: TrainerConfig,
    /// Adam between rounds, with `keep_optimizer_state`.
    optimizer: Option<nn::Optimizer>,
}

fn device(config: &TrainerConfig) -> Device {
    if config.cuda {
        Device::cuda_if_available()
    } else {
        Device::Cpu
    }
}

impl DetectorTrainer {
    /// A native detector initialised from `seed`.
    pub fn native(
        model: &DetectorConfig,
        examples: Vec<Example>,
        config: TrainerConfig,
        seed: u64,
    ) -> Result<Self, TrainError> {
        if model.input_size <= 0 || model.input_size % 32 != 0 {
            return Err(TrainError::InputSize(model.input_size));
        }
        if model.head == crate::model::HeadKind::Retinanet && model.input_size % 64 != 0 {
            return Err(TrainError::Unsupported(format!(
                "the RetinaNet head's P6 needs an input size that is a multiple of 64, not {}",
                model.input_size
            )));
        }
        let _threads = ThreadLease::acquire(config.threads);
        let vs = VarStore::new(device(&config));
        let network = {
            let _rng = torch_rng();
            tch::manual_seed(seed as i64);
            Network::Native(Box::new(Detector::new(&vs.root(), model)))
        };
        let layout = layout_of(&vs)?;
        Ok(Self {
            vs,
            network,
            layout,
            examples,
            size: model.input_size,
            config,
            optimizer: None,
        })
    }

    /// A TorchScript model, trained and evaluated through the same interface. Its
    /// parameters (not its buffers) are federated.
    pub fn torchscript(
        path: &Path,
        input_size: i64,
        examples: Vec<Example>,
        config: TrainerConfig,
    ) -> Result<Self, TrainError> {
        let _threads = ThreadLease::acquire(config.threads);
        let vs = VarStore::new(device(&config));
        let module = tch::TrainableCModule::load(path, vs.root())?;
        let network = Network::TorchScript(TorchScriptNet {
            module,
            path: path.display().to_string(),
        });
        let layout = layout_of(&vs)?;
        let trainer = Self {
            vs,
            network,
            layout,
            examples,
            size: input_size,
            config,
            optimizer: None,
        };
        // Check the output contract once, up front.
        let probe = Tensor::zeros(
            [1, 3, input_size, input_size],
            (tch::Kind::Float, trainer.vs.device()),
        );
        tch::no_grad(|| trainer.forward(&probe, false))?;
        Ok(trainer)
    }

    /// Training or evaluation mode (batch-norm behaviour) for TorchScript modules; the
    /// native detector takes the flag per call.
    fn set_mode(&mut self, train: bool) {
        if let Network::TorchScript(t) = &mut self.network {
            if train {
                t.module.set_train()
            } else {
                t.module.set_eval()
            }
        }
    }

    fn forward(&self, images: &Tensor, train: bool) -> Result<HeadOutputs, TrainError> {
        match &self.network {
            Network::Native(d) => Ok(d.forward(images, train)),
            Network::TorchScript(t) => t.outputs(images),
        }
    }

    pub fn input_size(&self) -> i64 {
        self.size
    }

    pub fn examples(&self) -> usize {
        self.examples.len()
    }

    /// Replaces the model's parameters (in the layout's order), e.g. with a global model
    /// to evaluate.
    pub fn set_parameters(&mut self, parameters: &[f32]) -> Result<(), TrainError> {
        Ok(unflatten(&mut self.vs, &self.layout, parameters)?)
    }

    /// Saves all variables (`.safetensors` or `.ot`, by extension).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        Ok(self.vs.save(path)?)
    }

    pub fn load(&mut self, path: &Path) -> Result<(), TrainError> {
        Ok(self.vs.load(path)?)
    }

    /// Detections and lesion-score maps for images of this trainer's input size.
    pub fn predict(
        &mut self,
        images: &[&[f32]],
        cfg: &DecodeConfig,
    ) -> Result<Predictions, TrainError> {
        let n = images.len() as i64;
        let flat: Vec<f32> = images.iter().flat_map(|i| i.iter().copied()).collect();
        let x = Tensor::from_slice(&flat)
            .view([n, 3, self.size, self.size])
            .to_device(self.vs.device());
        self.set_mode(false);
        let out = {
            let _threads = ThreadLease::acquire(self.config.threads);
            tch::no_grad(|| self.forward(&x, false))?
        };
        let out = HeadOutputs {
            heatmap: out.heatmap.to_device(Device::Cpu),
            boxes: out.boxes.to_device(Device::Cpu),
            mask: out.mask.to_device(Device::Cpu),
            retina: out.retina.map(|r| RetinaOutputs {
                logits: r.logits.to_device(Device::Cpu),
                deltas: r.deltas.to_device(Device::Cpu),
                anchors: r.anchors.to_device(Device::Cpu),
                input_size: r.input_size,
            }),
        };
        let scores = out.retina.as_ref().map_or(&out.heatmap, |r| &r.logits);
        let total = scores.numel();
        let finite = scores.isfinite().sum(Kind::Int64).int64_value(&[]) as usize;
        if finite != total {
            return Err(TrainError::NonFiniteOutput(total - finite, total));
        }
        Ok(Predictions {
            detections: decode(&out, cfg)?,
            scores: score_maps(&out, self.size),
        })
    }
}

impl LocalTrainer for DetectorTrainer {
    type Error = TrainError;

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn parameters(&self) -> Vec<f32> {
        flatten(&self.vs, &self.layout)
    }

    /// Adam over `steps` mini-batches drawn uniformly (with replacement) from the site's
    /// examples, augmented, with gradient-norm clipping and, for FedProx, the proximal
    /// term (μ/2)‖w − w_start‖² over the trainable parameters.
    fn train(
        &mut self,
        start: &[f32],
        cfg: &LocalTrainingConfig,
    ) -> Result<LocalUpdate, TrainError> {
        if self.examples.is_empty() {
            return Err(TrainError::NoData);
        }
        // The thread count stays fixed for the whole run (see `torch_state`).
        let _threads = ThreadLease::acquire(self.config.threads);
        {
            // Under the lock only so that this reseeding cannot fall between another
            // trainer's seeding and its initial weights. Draws during training (a
            // TorchScript model's dropout, say) are not serialised by it.
            let _rng = torch_rng();
            tch::manual_seed(cfg.seed as i64);
        }
        unflatten(&mut self.vs, &self.layout, start)?;
        self.set_mode(true);
        let anchor: Vec<Tensor> = if cfg.proximal_mu > 0.0 {
            self.vs
                .trainable_variables()
                .iter()
                .map(|t| t.detach().copy())
                .collect()
        } else {
            Vec::new()
        };
        let mut opt = match self.optimizer.take() {
            Some(mut kept) if self.config.keep_optimizer_state => {
                kept.set_lr(cfg.learning_rate);
                kept
            }
            _ => nn::Adam::default().build(&self.vs, cfg.learning_rate)?,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
        let size = self.size as usize;
        let mut loss_sum = 0.0;
        for _ in 0..cfg.steps {
            let batch: Vec<Example> = (0..cfg.batch_size.max(1))
                .map(|_| {
                    let ex = &self.examples[(rng.next_u64() % self.examples.len() as u64) as usize];
                    match &self.config.augmentation {
                        Some(aug) => augment(ex, size, aug, &mut rng),
                        None => ex.clone(),
                    }
                })
                .collect();
            let targets = Targets::build(&batch, self.size).to_device(self.vs.device());
            let out = self.forward(&targets.images, true)?;
            let mut loss = losses(&out, &targets).total;
            if cfg.proximal_mu > 0.0 {
                let prox = self
                    .vs
                    .trainable_variables()
                    .iter()
                    .zip(&anchor)
                    .map(|(w, w0)| (w - w0).square().sum(tch::Kind::Float))
                    .fold(
                        Tensor::zeros([], (tch::Kind::Float, self.vs.device())),
                        |a, b| a + b,
                    );
                loss += prox * (cfg.proximal_mu / 2.0);
            }
            opt.zero_grad();
            loss.backward();
            opt.clip_grad_norm(self.config.grad_clip_norm);
            opt.step();
            loss_sum += loss.double_value(&[]);
        }
        if self.config.keep_optimizer_state {
            self.optimizer = Some(opt);
        }
        Ok(LocalUpdate {
            parameters: flatten(&self.vs, &self.layout),
            samples: self.examples.len() as u64,
            mean_loss: (loss_sum / cfg.steps.max(1) as f64) as f32,
            patients: Vec::new(),
        })
    }
}

/// Detections on every lung slice of a scan and its lesion-score volume.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumePrediction {
    /// (slice index, detections in model pixels) for every slice containing lung.
    pub slices: Vec<(usize, Vec<Detection>)>,
    /// Lesion scores on the model's grid, (nz, size, size); zero outside the lung.
    pub scores: Volume<f32>,
}

/// Runs the model over a whole CT, slice by slice in batches; detections whose centre
/// lies outside the lung mask are discarded, as in the study.
pub fn infer_volume(
    trainer: &mut DetectorTrainer,
    scan: &Scan,
    spec: &SliceSpec,
    batch: usize,
    cfg: &DecodeConfig,
) -> Result<VolumePrediction, TrainError> {
    let samples = slices(scan, spec);
    let n = spec.size;
    let nz = scan.ct.shape[0];
    let mut scores = Volume::filled(
        [nz, n, n],
        [scan.ct.spacing[0], spec.spacing_mm, spec.spacing_mm],
        0f32,
    );
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(batch.max(1)) {
        let images: Vec<&[f32]> = chunk.iter().map(|s| s.image.as_slice()).collect();
        let predicted = trainer.predict(&images, cfg)?;
        for ((s, d), map) in chunk.iter().zip(predicted.detections).zip(predicted.scores) {
            let inside = |det: &Detection| {
                let (cx, cy) = (
                    ((det.bbox.x0 + det.bbox.x1) / 2.0) as usize,
                    ((det.bbox.y0 + det.bbox.y1) / 2.0) as usize,
                );
                cx < n && cy < n && s.lung[cy * n + cx]
            };
            out.push((s.z, d.into_iter().filter(inside).collect()));
            let plane = &mut scores.data[s.z * n * n..(s.z + 1) * n * n];
            for ((v, m), l) in plane.iter_mut().zip(map).zip(&s.lung) {
                *v = if *l { m } else { 0.0 };
            }
        }
    }
    Ok(VolumePrediction {
        slices: out,
        scores,
    })
}
