//! The federated strategies applied to real detectors' parameter vectors.

use tessera_core::{LocalTrainer, LocalTrainingConfig, SiteDelta, Strategy, weighted_mean};
use tessera_eval::BBox;
use tessera_train::{DetectorConfig, DetectorTrainer, Example, TrainerConfig};

fn site(brightness: f32, count: usize, seed: u64) -> DetectorTrainer {
    let size = 64;
    let examples = (0..count)
        .map(|i| {
            let mut lesion = vec![false; size * size];
            let x0 = 10 + 3 * i;
            for y in 20..30 {
                for x in x0..x0 + 10 {
                    lesion[y * size + x] = true;
                }
            }
            let image = (0..3 * size * size)
                .map(|j| {
                    if lesion[j % (size * size)] {
                        brightness
                    } else {
                        0.1
                    }
                })
                .collect();
            Example {
                image,
                boxes: vec![BBox::new(x0 as f32, 20.0, (x0 + 10) as f32, 30.0)],
                lesion,
            }
        })
        .collect();
    let model = DetectorConfig {
        input_size: 64,
        widths: [8, 8, 16, 16, 16],
        convs_per_stage: [1, 1, 1, 1],
        fpn_channels: 16,
        ..DetectorConfig::tiny()
    };
    DetectorTrainer::native(
        &model,
        examples,
        TrainerConfig {
            threads: 1,
            augmentation: None,
            ..TrainerConfig::default()
        },
        seed,
    )
    .unwrap()
}

#[test]
fn one_round_of_fedavg_and_fedbn_over_two_detectors() {
    let mut a = site(0.9, 3, 1);
    let mut b = site(0.5, 9, 2);
    let global = a.parameters();
    let cfg = LocalTrainingConfig {
        steps: 5,
        batch_size: 2,
        learning_rate: 1e-3,
        proximal_mu: 0.0,
        seed: 3,
    };
    let ua = a.train(&global, &cfg).unwrap();
    let ub = b.train(&global, &cfg).unwrap();
    let layout = a.layout().clone();
    let delta = |p: &[f32]| {
        p.iter()
            .zip(&global)
            .map(|(x, g)| x - g)
            .collect::<Vec<f32>>()
    };
    let mean = weighted_mean(&[
        SiteDelta {
            delta: delta(&ua.parameters),
            weight: ua.samples,
        },
        SiteDelta {
            delta: delta(&ub.parameters),
            weight: ub.samples,
        },
    ])
    .unwrap();

    // FedAvg: the new global model is the sample-weighted mean (3 : 9) of the two.
    let mut fedavg = global.clone();
    Strategy::FedAvg
        .server(false)
        .apply(&layout, &mut fedavg, &mean);
    for ((g, x), y) in fedavg.iter().zip(&ua.parameters).zip(&ub.parameters) {
        let expected = (3.0 * x + 9.0 * y) / 12.0;
        assert!(
            (g - expected).abs() <= 1e-5 * expected.abs().max(1.0),
            "{g} vs {expected}"
        );
    }

    // FedBN: normalisation entries stay where they were on the server, and each site
    // resumes with its own.
    let mut fedbn = global.clone();
    Strategy::FedBn
        .server(false)
        .apply(&layout, &mut fedbn, &mean);
    let merged_a = Strategy::FedBn.merge_into_local(&layout, &ua.parameters, &fedbn, false);
    let mut norm_entries = 0;
    for e in layout.entries() {
        let r = e.offset..e.offset + e.len;
        if e.kind.is_normalisation() {
            norm_entries += 1;
            assert_eq!(
                &fedbn[r.clone()],
                &global[r.clone()],
                "{} moved on the server",
                e.name
            );
            assert_eq!(
                &merged_a[r.clone()],
                &ua.parameters[r],
                "{} not kept at the site",
                e.name
            );
        } else {
            assert_eq!(&merged_a[r.clone()], &fedavg[r], "{} not federated", e.name);
        }
    }
    assert!(norm_entries > 0);
}
