//! The study's RetinaNet-style head (Zlocha, Dou, Glocker 2019, as the study used it):
//! anchors on pyramid levels P2–P6 (strides 4–64, sizes 16–256, five aspect ratios
//! 0.30–3.27 and three scales 0.85–1.36, 15 per location), a classification subnet and
//! a box subnet shared across levels (four 3×3 convolutions of the pyramid's width, then
//! one to 15 logits or 15 × 4 deltas), focal loss (α 0.25, γ 2) over anchors that match
//! a lesion with IoU ≥ 0.5 (positives; every lesion's best anchor too) or below 0.4
//! (negatives), smooth-L1 (σ 3) on keras-retinanet's corner deltas (divided by the
//! anchor's size and by 0.2), both normalised by the positives.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};
use tessera_eval::{BBox, Detection, nms, remove_nested};

use crate::loss::DecodeConfig;

/// Anchor sizes, strides, ratios (height / width) and scales per pyramid level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnchorSpec {
    pub sizes: [f64; 5],
    pub strides: [i64; 5],
    pub ratios: [f64; 5],
    pub scales: [f64; 3],
}

/// The study's anchors (its repository's optimised configuration).
pub const STUDY_ANCHORS: AnchorSpec = AnchorSpec {
    sizes: [16.0, 32.0, 64.0, 128.0, 256.0],
    strides: [4, 8, 16, 32, 64],
    ratios: [0.30, 0.56, 1.0, 1.78, 3.27],
    scales: [0.85, 1.08, 1.36],
};

/// Anchors per location.
pub const PER_LOCATION: i64 = 15;

/// keras-retinanet's regression normalisation.
const DELTA_STD: f64 = 0.2;

/// Every anchor of a `size` × `size` input as (x0, y0, x1, y1), ordered by level, row,
/// column and anchor (the order of [`RetinaHead::forward`]'s outputs).
pub fn anchors(spec: &AnchorSpec, size: i64) -> Tensor {
    let mut out: Vec<f32> = Vec::new();
    for (level, &stride) in spec.strides.iter().enumerate() {
        let g = size / stride;
        for y in 0..g {
            for x in 0..g {
                let (cx, cy) = (
                    (x as f64 + 0.5) * stride as f64,
                    (y as f64 + 0.5) * stride as f64,
                );
                for ratio in spec.ratios {
                    for scale in spec.scales {
                        let side = spec.sizes[level] * scale;
                        let w = side / ratio.sqrt();
                        let h = side * ratio.sqrt();
                        out.extend(
                            [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
                                .map(|v| v as f32),
                        );
                    }
                }
            }
        }
    }
    let n = (out.len() / 4) as i64;
    Tensor::from_slice(&out).view([n, 4])
}

/// Classification logits [B, N] and box deltas [B, N, 4] over all anchors.
pub struct RetinaOutputs {
    pub logits: Tensor,
    pub deltas: Tensor,
    pub anchors: Tensor,
    /// The input's side, to clip decoded boxes.
    pub input_size: i64,
}

fn subnet(p: nn::Path, c: i64, out: i64, bias: f64) -> nn::Sequential {
    let conv = |name: String, c_out: i64, bs_init: nn::Init| {
        nn::conv2d(
            &p / name,
            c,
            c_out,
            3,
            nn::ConvConfig {
                padding: 1,
                bs_init,
                ..Default::default()
            },
        )
    };
    let mut seq = nn::seq();
    for i in 0..4 {
        seq = seq
            .add(conv(format!("conv{i}"), c, nn::Init::Const(0.0)))
            .add_fn(|x| x.relu());
    }
    seq.add(conv("out".into(), out, nn::Init::Const(bias)))
}

/// The two subnets, shared across P2–P6.
pub struct RetinaHead {
    classify: nn::Sequential,
    regress: nn::Sequential,
}

impl std::fmt::Debug for RetinaHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetinaHead").finish_non_exhaustive()
    }
}

impl RetinaHead {
    pub fn new(root: &nn::Path, channels: i64) -> Self {
        // Focal-loss prior: every anchor starts at P(lesion) = 0.01.
        let prior = -((1.0f64 - 0.01) / 0.01).ln();
        Self {
            classify: subnet(root / "retina_classify", channels, PER_LOCATION, prior),
            regress: subnet(root / "retina_regress", channels, PER_LOCATION * 4, 0.0),
        }
    }

    /// Logits and deltas over the levels, flattened in [`anchors`]' order.
    pub fn forward(&self, levels: &[Tensor], anchors: Tensor, input_size: i64) -> RetinaOutputs {
        let mut logits = Vec::with_capacity(levels.len());
        let mut deltas = Vec::with_capacity(levels.len());
        for x in levels {
            let b = x.size()[0];
            let c = self.classify.forward(x).permute([0, 2, 3, 1]);
            logits.push(c.reshape([b, -1]));
            let r = self.regress.forward(x).permute([0, 2, 3, 1]);
            deltas.push(r.reshape([b, -1, 4]));
        }
        RetinaOutputs {
            logits: Tensor::cat(&logits, 1),
            deltas: Tensor::cat(&deltas, 1),
            anchors,
            input_size,
        }
    }
}

/// Intersection over union of every row of `a` [N, 4] with every row of `b` [G, 4].
fn iou(a: &Tensor, b: &Tensor) -> Tensor {
    let area = |t: &Tensor| {
        (t.select(1, 2) - t.select(1, 0)).clamp_min(0.0)
            * (t.select(1, 3) - t.select(1, 1)).clamp_min(0.0)
    };
    let (a1, b1) = (a.unsqueeze(1), b.unsqueeze(0));
    let lo = a1.narrow(2, 0, 2).maximum(&b1.narrow(2, 0, 2));
    let hi = a1.narrow(2, 2, 2).minimum(&b1.narrow(2, 2, 2));
    let wh = (hi - lo).clamp_min(0.0);
    let inter = wh.select(2, 0) * wh.select(2, 1);
    let union = area(a).unsqueeze(1) + area(b).unsqueeze(0) - &inter;
    inter / union.clamp_min(1e-6)
}

/// keras-retinanet's deltas of `boxes` [N, 4] against `anchors` [N, 4].
fn encode(anchors: &Tensor, boxes: &Tensor) -> Tensor {
    let w = (anchors.select(1, 2) - anchors.select(1, 0)).unsqueeze(1);
    let h = (anchors.select(1, 3) - anchors.select(1, 1)).unsqueeze(1);
    let scale = Tensor::cat(&[&w, &h, &w, &h], 1);
    (boxes - anchors) / scale / DELTA_STD
}

fn decode_deltas(anchors: &Tensor, deltas: &Tensor) -> Tensor {
    let w = (anchors.select(1, 2) - anchors.select(1, 0)).unsqueeze(1);
    let h = (anchors.select(1, 3) - anchors.select(1, 1)).unsqueeze(1);
    let scale = Tensor::cat(&[&w, &h, &w, &h], 1);
    anchors + deltas * DELTA_STD * scale
}

/// Per image: labels (1 lesion, 0 background, −1 ignored) and regression targets.
pub fn assign(anchors: &Tensor, boxes: &[Vec<BBox>]) -> (Tensor, Tensor) {
    let n = anchors.size()[0];
    let mut labels = Vec::with_capacity(boxes.len());
    let mut targets = Vec::with_capacity(boxes.len());
    for image in boxes {
        if image.is_empty() {
            labels.push(Tensor::zeros([n], (Kind::Float, anchors.device())));
            targets.push(Tensor::zeros([n, 4], (Kind::Float, anchors.device())));
            continue;
        }
        let flat: Vec<f32> = image
            .iter()
            .flat_map(|b| [b.x0, b.y0, b.x1, b.y1])
            .collect();
        let gt = Tensor::from_slice(&flat)
            .view([image.len() as i64, 4])
            .to_device(anchors.device());
        let overlaps = iou(anchors, &gt);
        let (best, which) = overlaps.max_dim(1, false);
        let mut label =
            best.ge(0.5).to_kind(Kind::Float) - (best.ge(0.4) * best.lt(0.5)).to_kind(Kind::Float);
        // Every lesion's best anchor is positive, however small the lesion.
        let best_anchor = overlaps.argmax(0, false);
        let _ = label.index_fill_(0, &best_anchor, 1.0);
        let which = which.index_put(
            &[Some(&best_anchor)],
            &Tensor::arange(image.len() as i64, (Kind::Int64, anchors.device())),
            false,
        );
        targets.push(encode(anchors, &gt.index_select(0, &which)));
        labels.push(label);
    }
    (Tensor::stack(&labels, 0), Tensor::stack(&targets, 0))
}

/// Focal loss over the labelled anchors and smooth-L1 over the positives, each divided
/// by the number of positives.
pub fn retina_losses(out: &RetinaOutputs, boxes: &[Vec<BBox>]) -> (Tensor, Tensor) {
    let (labels, targets) = assign(&out.anchors, boxes);
    let positive = labels.eq(1.0).to_kind(Kind::Float);
    let counted = labels.ge(0.0).to_kind(Kind::Float);
    let num_pos = positive.sum(Kind::Float).clamp_min(1.0);
    let p = out.logits.sigmoid();
    let bce = out.logits.binary_cross_entropy_with_logits::<Tensor>(
        &positive,
        None,
        None,
        tch::Reduction::None,
    );
    let p_t = &p * &positive + (1.0f64 - &p) * (1.0f64 - &positive);
    let alpha_t = &positive * 0.25 + (1.0f64 - &positive) * 0.75;
    let focal =
        (alpha_t * (1.0f64 - p_t).pow_tensor_scalar(2) * bce * counted).sum(Kind::Float) / &num_pos;
    let diff = (&out.deltas - targets).abs();
    let s2 = 9.0; // σ = 3
    let l1 = (&diff * &diff * (0.5 * s2)).where_self(&diff.lt(1.0 / s2), &(&diff - 0.5 / s2));
    let regression = (l1.sum_dim_intlist([2].as_slice(), false, Kind::Float) * positive)
        .sum(Kind::Float)
        / num_pos;
    (focal, regression)
}

/// Boxes and scores per image: the best-scoring anchors, decoded, clipped to the input,
/// nested boxes removed, then NMS.
pub fn retina_decode(
    out: &RetinaOutputs,
    cfg: &DecodeConfig,
) -> Result<Vec<Vec<Detection>>, tch::TchError> {
    let scores = out.logits.sigmoid();
    let b = scores.size()[0];
    let limit = out.input_size as f32;
    (0..b)
        .map(|i| {
            let s = scores.get(i);
            let k = (cfg.top_k as i64 * 20).min(s.size()[0]);
            let (top, idx) = s.topk(k, 0, true, true);
            let boxes = decode_deltas(
                &out.anchors.index_select(0, &idx),
                &out.deltas.get(i).index_select(0, &idx),
            );
            let top: Vec<f32> = Vec::try_from(top)?;
            let flat: Vec<f32> = Vec::try_from(boxes.flatten(0, -1))?;
            let dets: Vec<Detection> = top
                .iter()
                .zip(flat.chunks_exact(4))
                .filter(|(score, _)| **score >= cfg.min_score)
                .map(|(&score, c)| Detection {
                    bbox: BBox::new(
                        c[0].clamp(0.0, limit),
                        c[1].clamp(0.0, limit),
                        c[2].clamp(0.0, limit),
                        c[3].clamp(0.0, limit),
                    ),
                    score,
                })
                .collect();
            let mut kept = nms(remove_nested(dets, cfg.nested_overlap), cfg.nms_iou);
            kept.truncate(cfg.top_k);
            Ok(kept)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_cover_every_level_and_have_their_ratios() {
        let a = anchors(&STUDY_ANCHORS, 128);
        // 32² + 16² + 8² + 4² + 2² locations × 15.
        assert_eq!(a.size(), [(1024 + 256 + 64 + 16 + 4) * 15, 4]);
        let first: Vec<f32> = Vec::try_from(a.get(0)).unwrap();
        let (w, h) = (first[2] - first[0], first[3] - first[1]);
        assert!((h / w - 0.30).abs() < 1e-3, "{w} {h}");
        assert!(((w * h).sqrt() - 16.0 * 0.85).abs() < 1e-3);
        assert!(
            ((first[0] + first[2]) / 2.0 - 2.0).abs() < 1e-4,
            "centred on the cell"
        );
    }

    #[test]
    fn a_lesion_matches_anchors_and_its_deltas_decode_back() {
        let a = anchors(&STUDY_ANCHORS, 64);
        let lesion = BBox::new(10.0, 12.0, 30.0, 26.0);
        let (labels, targets) = assign(&a, &[vec![lesion], vec![]]);
        let positive = labels.get(0).eq(1.0).nonzero().squeeze_dim(1);
        assert!(positive.size()[0] >= 1);
        assert_eq!(labels.get(1).eq(1.0).sum(Kind::Int64).int64_value(&[]), 0);
        let back = decode_deltas(
            &a.index_select(0, &positive),
            &targets.get(0).index_select(0, &positive),
        );
        let got: Vec<f32> = Vec::try_from(back.get(0)).unwrap();
        for (g, w) in got.iter().zip([10.0, 12.0, 30.0, 26.0]) {
            assert!((g - w).abs() < 1e-3, "{got:?}");
        }
    }
}
