//! The slice-wise lesion detector: a VGG-style backbone, a feature pyramid, and dense
//! heads on the fused stride-4 level.

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::{self, ModuleT};

/// Output stride of the heads.
pub const STRIDE: i64 = 4;

/// Size and shape of the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Input is `input_size × input_size` with 3 channels (adjacent slices).
    pub input_size: i64,
    /// Channels of the stem and of the four backbone stages (C2…C5).
    pub widths: [i64; 5],
    /// 3×3 convolutions per backbone stage.
    pub convs_per_stage: [usize; 4],
    /// Channels of the pyramid and the heads.
    pub fpn_channels: i64,
}

impl DetectorConfig {
    /// Trains on 2 CPU cores at 128 × 128 in minutes (≈0.3 M parameters).
    pub fn tiny() -> Self {
        Self {
            input_size: 128,
            widths: [16, 16, 32, 64, 96],
            convs_per_stage: [1, 1, 1, 1],
            fpn_channels: 32,
        }
    }

    /// The study's scale: 512 × 512 input and a VGG19-like backbone (2, 2, 4, 4
    /// convolutions per stage); meant for a GPU.
    pub fn paper() -> Self {
        Self {
            input_size: 512,
            widths: [64, 128, 256, 512, 512],
            convs_per_stage: [2, 2, 4, 4],
            fpn_channels: 256,
        }
    }
}

/// The three dense outputs at stride 4.
pub struct HeadOutputs {
    /// Lesion-centre logits, [B, 1, H/4, W/4].
    pub heatmap: Tensor,
    /// (dx, dy, w, h) in output cells at each location, [B, 4, H/4, W/4].
    pub boxes: Tensor,
    /// Dense lesion-score logits, [B, 1, H/4, W/4].
    pub mask: Tensor,
}

/// Anything that maps [B, 3, H, W] images to [`HeadOutputs`]: the native detector and
/// TorchScript models that follow the same output contract.
pub trait DetectorNet {
    fn forward(&self, images: &Tensor, train: bool) -> HeadOutputs;
}

fn conv_bn(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> impl ModuleT + use<> {
    let conv = nn::conv2d(
        &p / "conv",
        c_in,
        c_out,
        3,
        nn::ConvConfig {
            stride,
            padding: 1,
            bias: false,
            ..Default::default()
        },
    );
    let bn = nn::batch_norm2d(&p / "bn", c_out, Default::default());
    nn::func_t(move |x, train| x.apply(&conv).apply_t(&bn, train).relu())
}

fn head(p: nn::Path, c: i64, out: i64, bias: f64) -> impl ModuleT + use<> {
    let hidden = nn::conv2d(
        &p / "hidden",
        c,
        c,
        3,
        nn::ConvConfig {
            padding: 1,
            ..Default::default()
        },
    );
    let cfg = nn::ConvConfig {
        bs_init: nn::Init::Const(bias),
        ..Default::default()
    };
    let out = nn::conv2d(&p / "out", c, out, 1, cfg);
    nn::func_t(move |x, _| x.apply(&hidden).relu().apply(&out))
}

/// The native detector.
pub struct Detector {
    stem: Box<dyn ModuleT>,
    stages: Vec<nn::SequentialT>,
    laterals: Vec<nn::Conv2D>,
    smooth: nn::Conv2D,
    heatmap: Box<dyn ModuleT>,
    boxes: Box<dyn ModuleT>,
    mask: Box<dyn ModuleT>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("stages", &self.stages.len())
            .finish_non_exhaustive()
    }
}

impl Detector {
    pub fn new(root: &nn::Path, config: &DetectorConfig) -> Self {
        let w = config.widths;
        let f = config.fpn_channels;
        let stem = Box::new(conv_bn(root / "stem", 3, w[0], 2));
        let mut stages = Vec::new();
        for s in 0..4 {
            let p = root / format!("stage{}", s + 1);
            let mut seq = nn::seq_t();
            for i in 0..config.convs_per_stage[s] {
                let c_in = if i == 0 { w[s] } else { w[s + 1] };
                seq = seq.add(conv_bn(&p / format!("conv{i}"), c_in, w[s + 1], 1));
            }
            seq = seq.add_fn(|x| x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false));
            stages.push(seq);
        }
        let laterals = (0..4)
            .map(|s| {
                nn::conv2d(
                    root / format!("fpn_lateral{}", s + 2),
                    w[s + 1],
                    f,
                    1,
                    Default::default(),
                )
            })
            .collect();
        let smooth = nn::conv2d(
            root / "fpn_smooth",
            f,
            f,
            3,
            nn::ConvConfig {
                padding: 1,
                ..Default::default()
            },
        );
        // Focal-loss prior: the centre logit starts at P(lesion) = 0.1.
        let prior = -((1.0f64 - 0.1) / 0.1).ln();
        Self {
            stem,
            stages,
            laterals,
            smooth,
            heatmap: Box::new(head(root / "head_heatmap", f, 1, prior)),
            boxes: Box::new(head(root / "head_boxes", f, 4, 0.0)),
            mask: Box::new(head(root / "head_mask", f, 1, prior)),
        }
    }
}

impl Detector {
    /// The three heads on fused stride-4 features.
    pub fn heads(&self, p2: &Tensor, train: bool) -> HeadOutputs {
        HeadOutputs {
            heatmap: self.heatmap.forward_t(p2, train),
            boxes: self.boxes.forward_t(p2, train),
            mask: self.mask.forward_t(p2, train),
        }
    }

    /// Backbone and pyramid: the fused stride-4 features the heads read.
    pub fn features(&self, images: &Tensor, train: bool) -> Tensor {
        let mut x = self.stem.forward_t(images, train);
        let mut features = Vec::with_capacity(4);
        for stage in &self.stages {
            x = x.apply_t(stage, train);
            features.push(x.shallow_clone());
        }
        // Top-down pathway: P5 = L5, P_k = L_k + upsample(P_{k+1}); the heads use P2.
        let mut p = features[3].apply(&self.laterals[3]);
        for k in (0..3).rev() {
            let lateral = features[k].apply(&self.laterals[k]);
            let size = lateral.size();
            p = lateral + p.upsample_nearest2d([size[2], size[3]], None, None);
        }
        p.apply(&self.smooth).relu()
    }
}

impl DetectorNet for Detector {
    fn forward(&self, images: &Tensor, train: bool) -> HeadOutputs {
        let p2 = self.features(images, train);
        self.heads(&p2, train)
    }
}

/// Variables of the three heads.
pub fn is_head(name: &str) -> bool {
    name.starts_with("head_")
}

/// What private fine-tuning trains; everything else stays the public model's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trainable {
    /// The three heads (hidden 3×3 and output 1×1 convolutions).
    #[default]
    Heads,
    /// Only the heads' output 1×1 convolutions (a few hundred parameters at `tiny`): a
    /// small adapter whose noise, in norm, is far below the whole heads'.
    HeadOutputs,
}

impl Trainable {
    pub fn includes(self, name: &str) -> bool {
        match self {
            Trainable::Heads => is_head(name),
            Trainable::HeadOutputs => is_head(name) && name.split('.').any(|p| p == "out"),
        }
    }
}
