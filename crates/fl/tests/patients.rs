//! The patient privacy unit through a whole federation: secret Poisson sampling at each
//! site, per-patient clipping, distributed noise under secure aggregation, the fixed
//! denominator, and ledgers that account the sampling.

use std::collections::BTreeMap;
use std::path::PathBuf;
use tessera_core::seed::RootSeed;
use tessera_core::{LocalTrainingConfig, Strategy};
use tessera_dp::{DpConfig, Ledger, Mechanism, PrivacyUnit};
use tessera_fl::{
    FederationConfig, KnownPatientTrainer, KnownUpdateTrainer, PatientSampling, Protocol,
    TrainRequest, memory,
};

const DIM: usize = 64;
const PER_SITE: usize = 10;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-patients-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn dp() -> DpConfig {
    DpConfig {
        mechanism: Mechanism::Ddg,
        epsilon: 50.0,
        delta: 1e-5,
        rounds: 3,
        l2_clip: 0.1,
        unit: PrivacyUnit::Patient,
        sampling_rate: 0.5,
        patients: 3 * PER_SITE as u64,
    }
}

/// Patients move every coordinate by 0.001 (norm 0.008, inside the clip) except one per
/// site that moves by 1 (norm 8, clipped to 0.1 = 0.0125 per coordinate).
fn trainers() -> Vec<KnownPatientTrainer> {
    (0..3)
        .map(|_| {
            let mut steps = vec![0.001f32; PER_SITE];
            steps[0] = 1.0;
            KnownPatientTrainer::new(DIM, steps).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_clipped_patients_move_the_model_by_their_sum_over_the_fixed_denominator() {
    let dir = tmp("federation");
    let cfg = FederationConfig::builder([6; 16], dir.join("checkpoint.bin"))
        .protocol(Protocol::Secagg)
        .codec(32, 1.0, 100)
        .dp(dp())
        .build()
        .unwrap();
    let mut fed = memory::start(
        cfg,
        KnownUpdateTrainer::layout_for(DIM).unwrap(),
        vec![0.0; DIM],
        trainers(),
        &BTreeMap::new(),
        &dir,
        RootSeed::from_experiment(9),
    )
    .await
    .unwrap();
    let c = &mut fed.coordinator;
    let mut before = 0.0;
    let mut moves = Vec::new();
    for round in 1..=3u64 {
        let report = c.run_round().await.unwrap();
        assert!(report.aborted.is_none(), "{report:?}");
        let charge = report.privacy.expect("a DP round carries its charge");
        assert_eq!((charge.round, charge.sampling_rate), (round, 0.5));
        let mean = c.global().iter().map(|&g| f64::from(g)).sum::<f64>() / DIM as f64;
        moves.push(mean - before);
        before = mean;
    }
    // Expected per round: (3 × 0.5 × 0.0125 + 27 × 0.5 × 0.001) / 15 ≈ 0.00215; the
    // sample's own spread (sd ≈ 0.0008) and the noise (sd ≈ 0.0003 for the mean of 64
    // coordinates) stay well inside the bounds. Unclipped, the big patients alone would
    // move it by about 0.1 per round.
    for (r, m) in moves.iter().enumerate() {
        assert!(*m > 0.0005 && *m < 0.0045, "round {}: {m}", r + 1);
    }
    // Over the three rounds the mean move has sd ≈ 0.0005 around 0.00215; were every
    // patient included each round (no sampling) it would be about 0.0043.
    let average = moves.iter().sum::<f64>() / 3.0;
    assert!(average > 0.0007 && average < 0.0036, "{average}");
    let ledger: Ledger =
        serde_json::from_slice(&std::fs::read(dir.join("checkpoint.ledger.json")).unwrap())
            .unwrap();
    assert_eq!(ledger.accountant, "rdp-subsampled");
    assert!(ledger.entries.iter().all(|e| e.sampling_rate == 0.5));
    assert!(
        ledger.spent() <= 50.0 && ledger.spent() > 40.0,
        "{}",
        ledger.spent()
    );
    c.shutdown().await.unwrap();
    for s in fed.sites {
        s.await.unwrap().unwrap();
    }
}

#[test]
fn a_site_that_cannot_train_per_patient_says_so() {
    let request = TrainRequest {
        round: 1,
        global: std::sync::Arc::new(vec![0.0; DIM]),
        strategy: Strategy::FedAvg,
        config: LocalTrainingConfig {
            steps: 1,
            batch_size: 1,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            seed: 1,
        },
        private: true,
        patient_sampling: Some(PatientSampling {
            rate: 0.5,
            seed: zeroize::Zeroizing::new([1; 32]),
        }),
    };
    let mut trainer = KnownUpdateTrainer::new(DIM, 0.1, 1).unwrap();
    let err = request.run_any(&mut trainer).unwrap_err();
    assert!(err.contains("cannot train per patient"), "{err}");
}

#[test]
fn the_poisson_sample_has_its_rate_and_depends_only_on_the_secret_seed() {
    let draw = |seed: u8, rate: f64| {
        PatientSampling {
            rate,
            seed: zeroize::Zeroizing::new([seed; 32]),
        }
        .draw(10_000)
    };
    let n = draw(1, 0.3).len() as f64;
    // Binomial(10 000, 0.3): sd ≈ 45.8; five of them.
    assert!((n - 3000.0).abs() < 230.0, "{n}");
    assert_eq!(draw(1, 0.3), draw(1, 0.3));
    assert_ne!(draw(1, 0.3), draw(2, 0.3));
    assert_eq!(draw(3, 1.0).len(), 10_000);
}
