//! Measures the synthetic cohorts' domain shift with a deliberately simple detector:
//! per-pixel logistic regression on local intensity (the windowed pixel and its 3×3 and
//! 7×7 means), trained on one cohort's training patients; lesion candidates are the
//! connected components of p ≥ 0.5 inside the lung, scored by their peak probability,
//! and evaluated with the study's protocol (tessera-eval) on every cohort's test split.
//!
//! `cargo run --release -p tessera-data --example domain_shift -- [DATA] [TRAIN_COHORT]`
//! (defaults: data/synthetic-small, hk-c; run `tessera data synth` first).

use std::path::PathBuf;
use tessera_data::{
    Registry, Role, SliceSample, SliceSpec, component_boxes, load_scan, locate, slices,
};
use tessera_eval::{DEFAULT_SCORE_THRESHOLD, Detection, PatientResult, SliceResult, summarise};

const FEATURES: usize = 4;

/// Box mean of the centre channel over a (2r+1)² window, from an integral image.
fn box_means(img: &[f32], n: usize, r: usize) -> Vec<f32> {
    let mut integral = vec![0f64; (n + 1) * (n + 1)];
    for y in 0..n {
        for x in 0..n {
            integral[(y + 1) * (n + 1) + x + 1] = img[y * n + x] as f64
                + integral[y * (n + 1) + x + 1]
                + integral[(y + 1) * (n + 1) + x]
                - integral[y * (n + 1) + x];
        }
    }
    let mut out = vec![0f32; n * n];
    for y in 0..n {
        for x in 0..n {
            let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(n));
            let (x0, x1) = (x.saturating_sub(r), (x + r + 1).min(n));
            let sum = integral[y1 * (n + 1) + x1]
                - integral[y0 * (n + 1) + x1]
                - integral[y1 * (n + 1) + x0]
                + integral[y0 * (n + 1) + x0];
            out[y * n + x] = (sum / ((y1 - y0) * (x1 - x0)) as f64) as f32;
        }
    }
    out
}

fn features(s: &SliceSample) -> Vec<[f32; FEATURES]> {
    let n = s.size;
    let centre = &s.image[n * n..2 * n * n];
    let m3 = box_means(centre, n, 1);
    let m7 = box_means(centre, n, 3);
    (0..n * n).map(|i| [centre[i], m3[i], m7[i], 1.0]).collect()
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

fn train(samples: &[SliceSample]) -> [f32; FEATURES] {
    // Balanced sample: every lesion pixel, and as many lung pixels without lesion
    // (every k-th one, deterministically).
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for s in samples {
        for (i, f) in features(s).into_iter().enumerate() {
            if s.lesion[i] {
                pos.push(f);
            } else if s.lung[i] {
                neg.push(f);
            }
        }
    }
    let step = (neg.len() / pos.len().max(1)).max(1);
    let data: Vec<([f32; FEATURES], f32)> = pos
        .iter()
        .map(|f| (*f, 1.0))
        .chain(neg.iter().step_by(step).map(|f| (*f, 0.0)))
        .collect();
    let mut w = [0f32; FEATURES];
    for _ in 0..400 {
        let mut grad = [0f32; FEATURES];
        for (f, y) in &data {
            let p = sigmoid(f.iter().zip(&w).map(|(a, b)| a * b).sum());
            for k in 0..FEATURES {
                grad[k] += (p - y) * f[k];
            }
        }
        for k in 0..FEATURES {
            w[k] -= 20.0 * grad[k] / data.len() as f32;
        }
    }
    w
}

fn detect(s: &SliceSample, w: &[f32; FEATURES]) -> Vec<Detection> {
    let prob: Vec<f32> = features(s)
        .iter()
        .map(|f| sigmoid(f.iter().zip(w).map(|(a, b)| a * b).sum()))
        .collect();
    let n = s.size;
    let mask: Vec<bool> = prob
        .iter()
        .zip(&s.lung)
        .map(|(p, l)| *p >= 0.5 && *l)
        .collect();
    component_boxes(&mask, n, n, 4)
        .into_iter()
        .map(|bbox| {
            let mut score = 0f32;
            for y in bbox.y0 as usize..bbox.y1 as usize {
                for x in bbox.x0 as usize..bbox.x1 as usize {
                    score = score.max(prob[y * n + x]);
                }
            }
            Detection { bbox, score }
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(args.next().unwrap_or_else(|| "data/synthetic-small".into()));
    let train_id = args.next().unwrap_or_else(|| "hk-c".into());
    let registry = Registry::load(std::path::Path::new("datasets.toml")).expect("datasets.toml");
    let spec = SliceSpec::SMALL;
    let prepare = |files: &tessera_data::PatientFiles| {
        let scan = load_scan(files).expect("scan loads");
        (files.id.clone(), slices(&scan, &spec))
    };
    let train_cohort =
        locate(registry.cohort(&train_id).expect("training cohort"), &root).expect("cohort files");
    let train_slices: Vec<SliceSample> = train_cohort
        .train
        .iter()
        .flat_map(|f| prepare(f).1)
        .collect();
    let w = train(&train_slices);
    println!(
        "trained on {train_id} ({} patients, {} slices); weights {w:?}",
        train_cohort.train.len(),
        train_slices.len()
    );
    println!(
        "| cohort | role | test patients | sensitivity (95% CI) | precision (95% CI) | FP per slice |"
    );
    println!("|---|---|---|---|---|---|");
    for c in registry.cohorts.iter().filter(|c| c.role != Role::Public) {
        let files = locate(c, &root).expect("cohort files");
        let patients: Vec<PatientResult> = files
            .test
            .iter()
            .map(prepare)
            .map(|(id, ss)| PatientResult {
                patient: id,
                volume_slices: None,
                slices: ss
                    .iter()
                    .map(|s| SliceResult {
                        truth: s.boxes.clone(),
                        detections: detect(s, &w),
                    })
                    .collect(),
            })
            .collect();
        let sum = summarise(&patients, DEFAULT_SCORE_THRESHOLD);
        let fmt = |e: Option<tessera_eval::Estimate>| {
            e.map_or("–".into(), |e| match e.n {
                0 | 1 => format!("{:.2} (n = 1: no interval)", e.mean),
                _ => format!("{:.2} ({:.2}–{:.2})", e.mean, e.low, e.high),
            })
        };
        println!(
            "| {} | {:?} | {} | {} | {} | {:.2} |",
            c.id,
            c.role,
            patients.len(),
            fmt(sum.sensitivity),
            fmt(sum.precision),
            sum.false_positives_per_slice.map_or(0.0, |e| e.mean)
        );
    }
}
