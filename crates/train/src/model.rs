//! The slice-wise lesion detector: a VGG-style backbone, a feature pyramid, and dense
//! heads on the fused stride-4 level — or, as the study, RetinaNet's anchor subnets on
//! P2–P6 ([`crate::retina`]) beside the stride-4 lesion-score head.

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::{self, ModuleT};

use crate::retina::{RetinaHead, RetinaOutputs, STUDY_ANCHORS, anchors};

/// Which detection head the network has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// Anchor-free centre heatmap and box regression at stride 4 (Tessera's default).
    #[default]
    Centre,
    /// The study's RetinaNet subnets on P2–P6 with its anchors.
    Retinanet,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_centre(h: &HeadKind) -> bool {
    *h == HeadKind::Centre
}

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
    /// The detection head (absent from the serialised config when `centre`).
    #[serde(default, skip_serializing_if = "is_centre")]
    pub head: HeadKind,
    /// Batch normalisation after each backbone convolution (VGG19 has none).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub batch_norm: bool,
    /// VGG's first block as the stem: two 3×3 convolutions and max-pooling, instead of
    /// one stride-2 convolution.
    #[serde(default, skip_serializing_if = "is_false")]
    pub vgg_stem: bool,
}

impl DetectorConfig {
    /// Trains on 2 CPU cores at 128 × 128 in minutes (≈0.3 M parameters).
    pub fn tiny() -> Self {
        Self {
            input_size: 128,
            widths: [16, 16, 32, 64, 96],
            convs_per_stage: [1, 1, 1, 1],
            fpn_channels: 32,
            head: HeadKind::Centre,
            batch_norm: true,
            vgg_stem: false,
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
            head: HeadKind::Centre,
            batch_norm: true,
            vgg_stem: false,
        }
    }

    /// The study's network at `input_size`: VGG19 without batch normalisation (blocks of
    /// 2, 2, 4, 4, 4 convolutions, 64–512 channels), a 256-channel pyramid and
    /// RetinaNet's subnets on P2–P6 with the study's anchors.
    pub fn study(input_size: i64) -> Self {
        Self {
            input_size,
            widths: [64, 128, 256, 512, 512],
            convs_per_stage: [2, 4, 4, 4],
            fpn_channels: 256,
            head: HeadKind::Retinanet,
            batch_norm: false,
            vgg_stem: true,
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
    /// The RetinaNet head's outputs (then `heatmap` and `boxes` are empty).
    pub retina: Option<RetinaOutputs>,
}

/// Anything that maps [B, 3, H, W] images to [`HeadOutputs`]: the native detector and
/// TorchScript models that follow the same output contract.
pub trait DetectorNet {
    fn forward(&self, images: &Tensor, train: bool) -> HeadOutputs;
}

fn conv_bn(p: nn::Path, c_in: i64, c_out: i64, stride: i64, batch_norm: bool) -> Box<dyn ModuleT> {
    let conv = nn::conv2d(
        &p / "conv",
        c_in,
        c_out,
        3,
        nn::ConvConfig {
            stride,
            padding: 1,
            bias: !batch_norm,
            ..Default::default()
        },
    );
    if !batch_norm {
        return Box::new(nn::func_t(move |x, _| x.apply(&conv).relu()));
    }
    let bn = nn::batch_norm2d(&p / "bn", c_out, Default::default());
    Box::new(nn::func_t(move |x, train| {
        x.apply(&conv).apply_t(&bn, train).relu()
    }))
}

fn max_pool(x: &Tensor) -> Tensor {
    x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
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
    stem: Vec<Box<dyn ModuleT>>,
    stages: Vec<nn::SequentialT>,
    laterals: Vec<nn::Conv2D>,
    smooth: nn::Conv2D,
    /// The centre heads (absent with RetinaNet).
    centre: Option<(Box<dyn ModuleT>, Box<dyn ModuleT>)>,
    mask: Box<dyn ModuleT>,
    retina: Option<Retina>,
    input_size: i64,
}

/// RetinaNet's extra pyramid layers and subnets.
struct Retina {
    /// 3×3 smoothing of P3–P5.
    smooth: Vec<nn::Conv2D>,
    /// P6: a 3×3 stride-2 convolution of C5.
    p6: nn::Conv2D,
    head: RetinaHead,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("stages", &self.stages.len())
            .finish_non_exhaustive()
    }
}

fn conv3(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        c_in,
        c_out,
        3,
        nn::ConvConfig {
            stride,
            padding: 1,
            ..Default::default()
        },
    )
}

impl Detector {
    pub fn new(root: &nn::Path, config: &DetectorConfig) -> Self {
        let w = config.widths;
        let f = config.fpn_channels;
        let bn = config.batch_norm;
        let stem: Vec<Box<dyn ModuleT>> = if config.vgg_stem {
            vec![
                conv_bn(root / "stem" / "conv0", 3, w[0], 1, bn),
                conv_bn(root / "stem" / "conv1", w[0], w[0], 1, bn),
                Box::new(nn::func_t(|x, _| max_pool(x))),
            ]
        } else {
            vec![conv_bn(root / "stem", 3, w[0], 2, bn)]
        };
        let mut stages = Vec::new();
        for s in 0..4 {
            let p = root / format!("stage{}", s + 1);
            let mut seq = nn::seq_t();
            for i in 0..config.convs_per_stage[s] {
                let c_in = if i == 0 { w[s] } else { w[s + 1] };
                let conv = conv_bn(&p / format!("conv{i}"), c_in, w[s + 1], 1, bn);
                seq = seq.add_fn_t(move |x, train| conv.forward_t(x, train));
            }
            seq = seq.add_fn(max_pool);
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
        // Creation order fixes the initial weights: stem, stages, laterals, smoothing,
        // the heads (heatmap, boxes, mask), then RetinaNet's layers.
        let smooth = conv3(root / "fpn_smooth", f, f, 1);
        // Focal-loss prior: the centre logit starts at P(lesion) = 0.1.
        let prior = -((1.0f64 - 0.1) / 0.1).ln();
        let centre = (config.head == HeadKind::Centre).then(|| {
            let heatmap: Box<dyn ModuleT> = Box::new(head(root / "head_heatmap", f, 1, prior));
            let boxes: Box<dyn ModuleT> = Box::new(head(root / "head_boxes", f, 4, 0.0));
            (heatmap, boxes)
        });
        let mask = Box::new(head(root / "head_mask", f, 1, prior));
        let retina = (config.head == HeadKind::Retinanet).then(|| Retina {
            smooth: (3..=5)
                .map(|k| conv3(root / format!("fpn_smooth_p{k}"), f, f, 1))
                .collect(),
            p6: conv3(root / "fpn_p6", w[4], f, 2),
            head: RetinaHead::new(root, f),
        });
        Self {
            stem,
            stages,
            laterals,
            smooth,
            centre,
            mask,
            retina,
            input_size: config.input_size,
        }
    }

    /// The stride-4 heads on fused features (with RetinaNet, the centre outputs are
    /// empty: [B, 0, H/4, W/4]).
    pub fn heads(&self, p2: &Tensor, train: bool) -> HeadOutputs {
        let (heatmap, boxes) = match &self.centre {
            Some((h, b)) => (h.forward_t(p2, train), b.forward_t(p2, train)),
            None => {
                let [b, _, h, w] = <[i64; 4]>::try_from(p2.size()).unwrap_or([0; 4]);
                let empty = Tensor::zeros([b, 0, h, w], (tch::Kind::Float, p2.device()));
                (empty.shallow_clone(), empty)
            }
        };
        HeadOutputs {
            heatmap,
            boxes,
            mask: self.mask.forward_t(p2, train),
            retina: None,
        }
    }

    /// Whether the network has RetinaNet's head.
    pub fn is_retina(&self) -> bool {
        self.retina.is_some()
    }

    /// Backbone features C2–C5 and the top-down pyramid before smoothing, P2–P5.
    fn pyramid(&self, images: &Tensor, train: bool) -> (Vec<Tensor>, Vec<Tensor>) {
        let mut x = images.shallow_clone();
        for layer in &self.stem {
            x = layer.forward_t(&x, train);
        }
        let mut features = Vec::with_capacity(4);
        for stage in &self.stages {
            x = x.apply_t(stage, train);
            features.push(x.shallow_clone());
        }
        // Top-down pathway: P5 = L5, P_k = L_k + upsample(P_{k+1}).
        let mut levels = vec![features[3].apply(&self.laterals[3])];
        for k in (0..3).rev() {
            let lateral = features[k].apply(&self.laterals[k]);
            let size = lateral.size();
            let up = levels[0].upsample_nearest2d([size[2], size[3]], None, None);
            levels.insert(0, lateral + up);
        }
        (features, levels)
    }

    /// Backbone and pyramid: the fused stride-4 features the heads read.
    pub fn features(&self, images: &Tensor, train: bool) -> Tensor {
        let (_, levels) = self.pyramid(images, train);
        levels[0].apply(&self.smooth).relu()
    }
}

impl DetectorNet for Detector {
    fn forward(&self, images: &Tensor, train: bool) -> HeadOutputs {
        let (features, levels) = self.pyramid(images, train);
        let p2 = levels[0].apply(&self.smooth).relu();
        let mut out = self.heads(&p2, train);
        if let Some(r) = &self.retina {
            let mut all = vec![p2];
            for (level, smooth) in levels[1..].iter().zip(&r.smooth) {
                all.push(level.apply(smooth));
            }
            all.push(features[3].apply(&r.p6));
            let anchors = anchors(&STUDY_ANCHORS, self.input_size).to_device(images.device());
            out.retina = Some(r.head.forward(&all, anchors, self.input_size));
        }
        out
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
