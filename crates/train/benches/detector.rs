//! Training throughput of `tiny` and inference latency of `tiny` and `paper` on this
//! machine's CPU (or CUDA with `TESSERA_CUDA=1`), timed with the real trainer.
//!
//! `cargo bench -p tessera-train --bench detector` prints a Markdown table. Each row is
//! the median of several timed repetitions after one warm-up; `paper` on a CPU is slow,
//! so its per-volume figure is the measured per-slice time × 300, labelled as such.

use std::time::Instant;
use tessera_core::{LocalTrainer, LocalTrainingConfig};
use tessera_eval::BBox;
use tessera_train::{DecodeConfig, DetectorConfig, DetectorTrainer, Example, TrainerConfig};

fn example(size: usize) -> Example {
    let mut lesion = vec![false; size * size];
    let s = size / 8;
    for y in s..2 * s {
        for x in s..2 * s {
            lesion[y * size + x] = true;
        }
    }
    let image = (0..3 * size * size)
        .map(|i| (i % 251) as f32 / 251.0)
        .collect();
    Example {
        image,
        boxes: vec![BBox::new(
            s as f32,
            s as f32,
            2.0 * s as f32,
            2.0 * s as f32,
        )],
        lesion,
    }
}

/// Median wall time of `reps` runs of `f`, in seconds.
fn median_seconds(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let now = Instant::now();
            f();
            now.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let cuda = std::env::var("TESSERA_CUDA").is_ok_and(|v| v == "1");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as i32);
    let config = TrainerConfig {
        threads,
        cuda,
        ..TrainerConfig::default()
    };
    println!(
        "device: {}, libtorch threads: {threads}",
        if cuda && tch::Cuda::is_available() {
            "CUDA"
        } else {
            "CPU"
        }
    );
    println!("| model | input | measurement | result |");
    println!("|---|---|---|---|");

    let tiny = DetectorConfig::tiny();
    let data: Vec<Example> = (0..16).map(|_| example(tiny.input_size as usize)).collect();
    let mut t = DetectorTrainer::native(&tiny, data, config.clone(), 1).expect("tiny detector");
    println!("| tiny | 128² | parameters | {} |", t.layout().len());
    let batch = 6; // the study's batch size
    let steps = 20;
    let round = LocalTrainingConfig {
        steps,
        batch_size: batch,
        learning_rate: 1e-3,
        proximal_mu: 0.0,
        seed: 1,
    };
    let start = t.parameters();
    t.train(
        &start,
        &LocalTrainingConfig {
            steps: 2,
            ..round.clone()
        },
    )
    .expect("warm-up");
    let per_step = median_seconds(3, || {
        t.train(&start, &round).expect("training");
    }) / steps as f64;
    println!(
        "| tiny | 128² | training, batch {batch} with augmentation | {:.1} slices/s ({:.0} ms/step) |",
        batch as f64 / per_step,
        per_step * 1e3
    );
    let images: Vec<Vec<f32>> = (0..batch).map(|_| example(128).image).collect();
    let refs: Vec<&[f32]> = images.iter().map(|v| v.as_slice()).collect();
    t.predict(&refs, &DecodeConfig::default()).expect("warm-up");
    let per_slice = median_seconds(5, || {
        t.predict(&refs, &DecodeConfig::default())
            .expect("inference");
    }) / batch as f64;
    println!(
        "| tiny | 128² | inference per slice (batch {batch}) | {:.1} ms |",
        per_slice * 1e3
    );
    println!(
        "| tiny | 128² | inference per 300-slice volume | {:.2} s (measured per slice × 300) |",
        per_slice * 300.0
    );

    let paper = DetectorConfig::paper();
    let mut p = DetectorTrainer::native(&paper, vec![], config, 1).expect("paper detector");
    println!("| paper | 512² | parameters | {} |", p.layout().len());
    let images: Vec<Vec<f32>> = (0..2).map(|_| example(512).image).collect();
    let refs: Vec<&[f32]> = images.iter().map(|v| v.as_slice()).collect();
    p.predict(&refs, &DecodeConfig::default()).expect("warm-up");
    let per_slice = median_seconds(3, || {
        p.predict(&refs, &DecodeConfig::default())
            .expect("inference");
    }) / 2.0;
    println!(
        "| paper | 512² | inference per slice (batch 2) | {:.0} ms |",
        per_slice * 1e3
    );
    println!(
        "| paper | 512² | inference per 300-slice volume | {:.0} s (measured per slice × 300) |",
        per_slice * 300.0
    );
}
