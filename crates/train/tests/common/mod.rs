//! Small synthetic slices and the tiny detector shared by the trainer's test binaries.
// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

use tessera_core::{LocalTrainer, LocalTrainingConfig};
use tessera_eval::BBox;
use tessera_train::{DetectorConfig, DetectorTrainer, Example, TrainerConfig};

pub const SIZE: usize = 64;

/// Lung-like background with one or two bright square lesions.
pub fn examples(count: usize) -> Vec<Example> {
    (0..count)
        .map(|i| {
            let mut image = vec![0.1f32; 3 * SIZE * SIZE];
            let mut lesion = vec![false; SIZE * SIZE];
            let mut boxes = Vec::new();
            let spots = [
                (8 + (i * 7) % 30, 10 + (i * 11) % 30, 8 + i % 5),
                (40, 36 + i % 8, 10),
            ];
            for &(x0, y0, side) in spots.iter().take(1 + i % 2) {
                for y in y0..y0 + side {
                    for x in x0..x0 + side {
                        lesion[y * SIZE + x] = true;
                        for c in 0..3 {
                            image[c * SIZE * SIZE + y * SIZE + x] = 0.7;
                        }
                    }
                }
                boxes.push(BBox::new(
                    x0 as f32,
                    y0 as f32,
                    (x0 + side) as f32,
                    (y0 + side) as f32,
                ));
            }
            Example {
                image,
                boxes,
                lesion,
            }
        })
        .collect()
}

pub fn tiny() -> DetectorConfig {
    DetectorConfig {
        input_size: SIZE as i64,
        widths: [8, 8, 16, 16, 16],
        convs_per_stage: [1, 1, 1, 1],
        fpn_channels: 16,
        ..DetectorConfig::tiny()
    }
}

pub fn round(steps: usize, seed: u64) -> LocalTrainingConfig {
    LocalTrainingConfig {
        steps,
        batch_size: 4,
        learning_rate: 3e-3,
        proximal_mu: 0.0,
        seed,
    }
}

pub fn no_augmentation() -> TrainerConfig {
    TrainerConfig {
        augmentation: None,
        threads: 1,
        ..TrainerConfig::default()
    }
}

/// Eight steps of the tiny detector from seed 11, with `threads` intra-op threads.
pub fn deterministic_run(threads: i32) -> Vec<f32> {
    let mut t = DetectorTrainer::native(
        &tiny(),
        examples(6),
        TrainerConfig {
            threads,
            ..TrainerConfig::default()
        },
        11,
    )
    .unwrap();
    t.train(&t.parameters(), &round(8, 5)).unwrap().parameters
}

pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}
