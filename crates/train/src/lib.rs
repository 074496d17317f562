//! # tessera-train: local training with tch (libtorch)
//!
//! Sites train the study's kind of model — a slice-wise 2D lesion detector on three
//! adjacent CT slices — on data that never leaves them, and hand the federation a flat
//! parameter vector through [`tessera_core::LocalTrainer`].
//!
//! **The detector.** A VGG-style backbone (3×3 conv + batch norm + ReLU, max-pooling;
//! `paper` uses VGG19's 2-2-4-4 layout at 512², `tiny` one conv per stage at 128²), a
//! feature pyramid (lateral 1×1 convolutions, top-down nearest upsampling, 3×3
//! smoothing) fused down to stride 4, and three dense heads there. We chose an
//! anchor-free CenterNet-style head over RetinaNet anchors: lesions span 5–60 mm, i.e.
//! 2–20 pixels at the `tiny` resolution, and a stride-4 centre heatmap needs no anchor
//! sizes, ratios or scales tuned to them (the study's anchors start at 16 pixels on
//! 512², which at 128² would miss the small lesions). The heads: a centre heatmap
//! trained with a penalty-reduced focal loss, box regression (dx, dy, w, h) with the
//! study's smooth-L1 (σ = 3), and the study's dense lesion-score ("mask") head with
//! focal loss (α 0.25, γ 2) weighted 0.6. Decoding keeps heatmap peaks, removes nested
//! boxes (overlap > 0.7, as in the study) and applies NMS.
//!
//! **The study's network, as an option** ([`DetectorConfig::study`]; `detector =
//! "study"` in an experiment's settings): VGG19 without batch normalisation (blocks of
//! 2, 2, 4, 4, 4 convolutions), a pyramid P2–P6 (P6 a stride-2 convolution of C5), and
//! RetinaNet's classification and box subnets shared across the levels with the study's
//! anchors (sizes 16–256, ratios 0.30–3.27, scales 0.85–1.36; see the `retina` module),
//! focal loss and smooth-L1 on keras-retinanet's deltas, beside the same lesion-score
//! head on P2. Tested at a small width (on four slices its loss halves and it then
//! finds every lesion of at least three); at 512² it is meant for a GPU and has not
//! been trained here.
//!
//! **Training.** Adam with gradient-norm clipping, the study's augmentation (rotation,
//! translation, shear, scale, flips; deterministic under the round's seed), FedProx's
//! proximal term when μ > 0. With the same seed and thread count on CPU, two runs give
//! bitwise-identical parameters, whatever other trainers of the process do at the time:
//! libtorch's generator and intra-op thread count are one per process, and the
//! `torch_state` module serialises seeding and holds each run's thread count.
//!
//! **Parameters.** Every variable of the `VarStore`, sorted by name, flattened to
//! `Vec<f32>` ([`flatten`]); batch-norm weights, biases and running statistics are marked
//! as normalisation. Policy: FedAvg, FedProx and FedAvgM average them (statistics
//! included, sample-weighted) like any parameter; FedBN keeps them at each site.
//!
//! **Bring your own model.** [`DetectorTrainer::torchscript`] loads a module saved with
//! `torch.jit.save` whose `forward` returns (heatmap, boxes, mask) at stride 4 and
//! trains and evaluates it exactly like the native detector (its parameters are
//! federated; its buffers stay local).

mod augment;
mod finetune;
mod kernels;
mod loss;
mod model;
mod params;
mod retina;
mod torch_state;
mod trainer;

pub use augment::{Augmentation, augment};
pub use finetune::FineTuner;
pub use kernels::{CPU_KERNEL_PINS, numeric_environment, pin_cpu_kernels};
pub use loss::{
    DecodeConfig, Example, Losses, MASK_LOSS_WEIGHT, Targets, decode, losses, score_maps,
};
pub use model::{
    Detector, DetectorConfig, DetectorNet, HeadKind, HeadOutputs, STRIDE, Trainable, is_head,
};
pub use params::{flatten, layout_of, unflatten};
pub use retina::{AnchorSpec, PER_LOCATION, STUDY_ANCHORS, anchors};
pub use trainer::{
    DetectorTrainer, Predictions, TrainError, TrainerConfig, VolumePrediction, infer_volume,
};

impl Example {
    /// A training example from a prepared slice.
    pub fn from_slice(s: &tessera_data::SliceSample) -> Self {
        Self {
            image: s.image.clone(),
            boxes: s.boxes.clone(),
            lesion: s.lesion.clone(),
        }
    }
}

/// Whether libtorch sees a CUDA device.
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}
