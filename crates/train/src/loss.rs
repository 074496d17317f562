//! Targets, losses and decoding for the stride-4 heads.
//!
//! - Centre heatmap: a Gaussian splat per lesion box (σ = one sixth of its larger side,
//!   peak 1 at the box centre's cell); CenterNet's penalty-reduced focal loss (α = 2,
//!   β = 4), normalised by the number of lesions.
//! - Boxes: (dx, dy, w, h) in cells at each centre cell; smooth-L1 with σ = 3 as in the
//!   study, normalised by the number of lesions.
//! - Lesion-score map: the mask logits, upsampled to the input size, against the lesion
//!   mask; sigmoid focal loss (α = 0.25, γ = 2) normalised by the lesion pixels, weighted
//!   0.6 as in the study.

use tch::{Kind, TchError, Tensor};
use tessera_eval::{BBox, Detection, nms, remove_nested};

use crate::model::{HeadOutputs, STRIDE};

/// Weight of the lesion-score (mask) loss, as in the study.
pub const MASK_LOSS_WEIGHT: f64 = 0.6;

/// One training example: the stacked slices, the lesion boxes, the lesion mask.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// 3 × size × size, channels first.
    pub image: Vec<f32>,
    pub boxes: Vec<BBox>,
    /// size × size
    pub lesion: Vec<bool>,
}

/// Targets of a batch as tensors.
pub struct Targets {
    pub images: Tensor,
    /// Each image's lesion boxes (input pixels), for anchor assignment.
    pub boxes: Vec<Vec<BBox>>,
    heat: Tensor,
    regression: Tensor,
    positive: Tensor,
    mask: Tensor,
}

impl Targets {
    /// The same targets on `device` (where the model runs), so that losses are computed
    /// there without copying the model's outputs back every step.
    pub fn to_device(&self, device: tch::Device) -> Self {
        Self {
            images: self.images.to_device(device),
            boxes: self.boxes.clone(),
            heat: self.heat.to_device(device),
            regression: self.regression.to_device(device),
            positive: self.positive.to_device(device),
            mask: self.mask.to_device(device),
        }
    }

    /// These rows of every target.
    pub fn select(&self, rows: &[i64]) -> Self {
        let index = Tensor::from_slice(rows).to_device(self.heat.device());
        Self {
            images: self.images.index_select(0, &index),
            boxes: rows
                .iter()
                .filter_map(|&r| self.boxes.get(r as usize).cloned())
                .collect(),
            heat: self.heat.index_select(0, &index),
            regression: self.regression.index_select(0, &index),
            positive: self.positive.index_select(0, &index),
            mask: self.mask.index_select(0, &index),
        }
    }

    /// Targets stacked along the batch dimension.
    pub fn cat(parts: &[Targets]) -> Self {
        let field =
            |f: fn(&Targets) -> &Tensor| Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0);
        Self {
            images: field(|t| &t.images),
            boxes: parts.iter().flat_map(|t| t.boxes.iter().cloned()).collect(),
            heat: field(|t| &t.heat),
            regression: field(|t| &t.regression),
            positive: field(|t| &t.positive),
            mask: field(|t| &t.mask),
        }
    }

    /// The targets without their images (for heads trained on cached features).
    pub fn without_images(self) -> Self {
        Self {
            images: Tensor::zeros([self.heat.size()[0], 0], (Kind::Float, self.heat.device())),
            ..self
        }
    }

    pub fn build(batch: &[Example], size: i64) -> Self {
        let g = size / STRIDE;
        let cells = (g * g) as usize;
        let n = batch.len();
        let mut heat = vec![0f32; n * cells];
        let mut regression = vec![0f32; n * 4 * cells];
        let mut positive = vec![0f32; n * cells];
        let mut images = Vec::with_capacity(n * 3 * (size * size) as usize);
        let mut mask = Vec::with_capacity(n * (size * size) as usize);
        for (b, ex) in batch.iter().enumerate() {
            images.extend_from_slice(&ex.image);
            mask.extend(ex.lesion.iter().map(|m| f32::from(u8::from(*m))));
            for bx in &ex.boxes {
                let s = STRIDE as f32;
                let (cx, cy) = ((bx.x0 + bx.x1) / 2.0 / s, (bx.y0 + bx.y1) / 2.0 / s);
                let (w, h) = ((bx.x1 - bx.x0) / s, (bx.y1 - bx.y0) / s);
                let (ix, iy) = (
                    cx.floor().clamp(0.0, (g - 1) as f32),
                    cy.floor().clamp(0.0, (g - 1) as f32),
                );
                let sigma = (w.max(h) / 6.0).max(0.5);
                let reach = (3.0 * sigma).ceil() as i64;
                for y in (iy as i64 - reach).max(0)..=(iy as i64 + reach).min(g - 1) {
                    for x in (ix as i64 - reach).max(0)..=(ix as i64 + reach).min(g - 1) {
                        let d2 = (x as f32 - ix).powi(2) + (y as f32 - iy).powi(2);
                        let v = (-d2 / (2.0 * sigma * sigma)).exp();
                        let i = b * cells + (y * g + x) as usize;
                        heat[i] = heat[i].max(v);
                    }
                }
                let c = (iy as i64 * g + ix as i64) as usize;
                positive[b * cells + c] = 1.0;
                for (k, v) in [cx - ix, cy - iy, w, h].into_iter().enumerate() {
                    regression[b * 4 * cells + k * cells + c] = v;
                }
            }
        }
        let n = n as i64;
        Self {
            images: Tensor::from_slice(&images).view([n, 3, size, size]),
            boxes: batch.iter().map(|ex| ex.boxes.clone()).collect(),
            heat: Tensor::from_slice(&heat).view([n, 1, g, g]),
            regression: Tensor::from_slice(&regression).view([n, 4, g, g]),
            positive: Tensor::from_slice(&positive).view([n, 1, g, g]),
            mask: Tensor::from_slice(&mask).view([n, 1, size, size]),
        }
    }
}

/// The three loss terms and their weighted sum.
pub struct Losses {
    pub total: Tensor,
    pub heatmap: f64,
    pub boxes: f64,
    pub mask: f64,
}

fn smooth_l1(x: &Tensor, sigma: f64) -> Tensor {
    let s2 = sigma * sigma;
    let ax = x.abs();
    // torch.where(|x| < 1/σ², ½σ²x², |x| − ½/σ²)
    (&ax * &ax * (0.5 * s2)).where_self(&ax.lt(1.0 / s2), &(&ax - 0.5 / s2))
}

pub fn losses(out: &HeadOutputs, t: &Targets) -> Losses {
    let mask = mask_loss(out, t);
    if let Some(r) = &out.retina {
        let (classify, regress) = crate::retina::retina_losses(r, &t.boxes);
        let total = &classify + &regress + &mask * MASK_LOSS_WEIGHT;
        return Losses {
            heatmap: classify.double_value(&[]),
            boxes: regress.double_value(&[]),
            mask: mask.double_value(&[]),
            total,
        };
    }
    let num_pos = t.positive.sum(Kind::Float).clamp_min(1.0);
    let p = out.heatmap.sigmoid().clamp(1e-4, 1.0 - 1e-4);
    let is_peak = t.heat.ge(1.0 - 1e-6).to_kind(Kind::Float);
    let one_minus_p: Tensor = 1.0 - &p;
    let pos = -(p.log() * one_minus_p.pow_tensor_scalar(2) * &is_peak);
    let neg_weight = (1.0f64 - &t.heat).pow_tensor_scalar(4) * (1.0f64 - &is_peak);
    let neg = -(one_minus_p.log() * p.pow_tensor_scalar(2) * neg_weight);
    let heatmap = (pos.sum(Kind::Float) + neg.sum(Kind::Float)) / &num_pos;

    let boxes =
        (smooth_l1(&(&out.boxes - &t.regression), 3.0) * &t.positive).sum(Kind::Float) / &num_pos;

    let total = &heatmap + &boxes + &mask * MASK_LOSS_WEIGHT;
    Losses {
        heatmap: heatmap.double_value(&[]),
        boxes: boxes.double_value(&[]),
        mask: mask.double_value(&[]),
        total,
    }
}

/// The lesion-score map's focal loss against the lesion mask, per lesion pixel.
fn mask_loss(out: &HeadOutputs, t: &Targets) -> Tensor {
    let size = t.mask.size();
    let logits = out
        .mask
        .upsample_bilinear2d([size[2], size[3]], false, None, None);
    let q = logits.sigmoid();
    let bce = logits.binary_cross_entropy_with_logits::<Tensor>(
        &t.mask,
        None,
        None,
        tch::Reduction::None,
    );
    let p_t = &q * &t.mask + (1.0f64 - &q) * (1.0f64 - &t.mask);
    let alpha_t = &t.mask * 0.25 + (1.0f64 - &t.mask) * 0.75;
    let focal = alpha_t * (1.0f64 - p_t).pow_tensor_scalar(2) * bce;
    focal.sum(Kind::Float) / t.mask.sum(Kind::Float).clamp_min(1.0)
}

/// Detection post-processing settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeConfig {
    /// Peaks below this score are ignored.
    pub min_score: f32,
    /// At most this many peaks per slice.
    pub top_k: usize,
    pub nms_iou: f32,
    /// The study removed boxes nested in a higher-scoring one (overlap > 0.7).
    pub nested_overlap: f32,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            min_score: 0.05,
            top_k: 50,
            nms_iou: 0.5,
            nested_overlap: 0.7,
        }
    }
}

/// Boxes (input pixels) and scores per image, after NMS and nested-box removal.
pub fn decode(out: &HeadOutputs, cfg: &DecodeConfig) -> Result<Vec<Vec<Detection>>, TchError> {
    if let Some(r) = &out.retina {
        return crate::retina::retina_decode(r, cfg);
    }
    let heat = out.heatmap.sigmoid();
    let peaks = heat.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false);
    let keep = heat.eq_tensor(&peaks).to_kind(Kind::Float) * &heat;
    let [n, _, g, _] = <[i64; 4]>::try_from(keep.size())
        .map_err(|s| TchError::Shape(format!("heatmap of shape {s:?}")))?;
    let scores: Vec<f32> = Vec::<f32>::try_from(keep.flatten(0, -1))?;
    let regress: Vec<f32> = Vec::<f32>::try_from(out.boxes.flatten(0, -1))?;
    let cells = (g * g) as usize;
    let s = STRIDE as f32;
    Ok((0..n as usize)
        .map(|b| {
            let mut candidates: Vec<(usize, f32)> = scores[b * cells..(b + 1) * cells]
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, v)| *v >= cfg.min_score)
                .collect();
            candidates.sort_by(|a, c| c.1.total_cmp(&a.1));
            candidates.truncate(cfg.top_k);
            let dets = candidates
                .into_iter()
                .map(|(c, score)| {
                    let r = |k: usize| regress[b * 4 * cells + k * cells + c];
                    let (gx, gy) = ((c % g as usize) as f32, (c / g as usize) as f32);
                    let (cx, cy) = ((gx + r(0)) * s, (gy + r(1)) * s);
                    let (w, h) = (r(2).max(0.25) * s, r(3).max(0.25) * s);
                    Detection {
                        bbox: BBox::new(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0),
                        score,
                    }
                })
                .collect();
            nms(remove_nested(dets, cfg.nested_overlap), cfg.nms_iou)
        })
        .collect())
}

/// Lesion-score maps at input resolution, [B, size, size] row-major per image.
pub fn score_maps(out: &HeadOutputs, size: i64) -> Vec<Vec<f32>> {
    let maps = out
        .mask
        .upsample_bilinear2d([size, size], false, None, None)
        .sigmoid();
    let n = maps.size()[0];
    (0..n)
        .map(|b| Vec::<f32>::try_from(maps.get(b).flatten(0, -1)).unwrap_or_default())
        .collect()
}
