//! Federations with differential privacy: the ledger, the halt at the budget, resume,
//! and the noisy global model against the plaintext mean.

use std::collections::BTreeMap;
use std::path::PathBuf;
use tessera_core::seed::RootSeed;
use tessera_dp::{DpConfig, Ledger, Mechanism};
use tessera_fl::{Coordinator, FederationConfig, FlError, KnownUpdateTrainer, Protocol, memory};

const DIM: usize = 64;
const SITES: u32 = 4;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-dp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn dp(mechanism: Mechanism) -> DpConfig {
    DpConfig {
        mechanism,
        epsilon: 50.0,
        delta: 1e-5,
        rounds: 3,
        l2_clip: 0.1,
        ..Default::default()
    }
}

fn config(dir: &std::path::Path, mechanism: Mechanism, protocol: Protocol) -> FederationConfig {
    FederationConfig::builder([4; 16], dir.join("checkpoint.bin"))
        .protocol(protocol)
        .codec(24, 1.0, 100)
        .dp(dp(mechanism))
        .build()
        .unwrap()
}

async fn start(cfg: FederationConfig, dir: &std::path::Path) -> memory::MemoryFederation {
    // Every site moves every parameter by 0.01 (update norm 0.08, inside the 0.1 clip).
    let trainers = (0..SITES)
        .map(|_| KnownUpdateTrainer::new(DIM, 0.01, 100).unwrap())
        .collect();
    memory::start(
        cfg,
        KnownUpdateTrainer::layout_for(DIM).unwrap(),
        vec![0.0; DIM],
        trainers,
        &BTreeMap::new(),
        dir,
        RootSeed::from_experiment(5),
    )
    .await
    .unwrap()
}

/// Runs the planned rounds, checks the model moved by about 0.01 per round, and that
/// the round after the plan is refused.
async fn planned_rounds_then_halt(c: &mut Coordinator, dir: &std::path::Path) {
    for round in 1..=3u64 {
        let report = c.run_round().await.unwrap();
        assert!(report.aborted.is_none(), "{report:?}");
        let charge = report.privacy.expect("DP rounds carry their charge");
        assert_eq!(charge.round, round);
        assert!(charge.rho > 0.0 && charge.cumulative_epsilon <= 50.0);
        let mean = c.global().iter().map(|&g| f64::from(g)).sum::<f64>() / DIM as f64;
        // ε = 50 over 3 rounds: ρ ≈ 6.9 per round, so the summed noise has sd about
        // 0.1/√(2ρ) ≈ 0.027 per coordinate; the mean of 4 sites over 64 coordinates has
        // sd about 0.027/4/8 ≈ 0.0008, and 0.004 is five of those.
        assert!(
            (mean - 0.01 * round as f64).abs() < 0.004,
            "round {round}: {mean}"
        );
    }
    let ledger: Ledger =
        serde_json::from_slice(&std::fs::read(dir.join("checkpoint.ledger.json")).unwrap())
            .unwrap();
    assert_eq!(ledger.entries.len(), 3);
    assert!(
        ledger.spent() > 40.0 && ledger.spent() <= 50.0,
        "{}",
        ledger.spent()
    );
    let halted = c.run_round().await.unwrap_err();
    assert!(
        matches!(halted, FlError::Privacy(_)) && halted.to_string().contains("budget exhausted"),
        "{halted}"
    );
    assert_eq!(
        c.ledger().unwrap().entries.len(),
        3,
        "a refused round is not charged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_noise_is_accounted_and_training_halts_at_the_budget() {
    for mechanism in [Mechanism::Ddg, Mechanism::Skellam] {
        let dir = tmp(mechanism.name());
        let mut fed = start(config(&dir, mechanism, Protocol::Secagg), &dir).await;
        planned_rounds_then_halt(&mut fed.coordinator, &dir).await;
        let ledger = fed.coordinator.ledger().unwrap();
        assert_eq!(ledger.exact_sampler, mechanism == Mechanism::Ddg);
        fed.coordinator.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_noise_works_without_secure_aggregation() {
    let dir = tmp("central");
    let mut fed = start(config(&dir, Mechanism::Central, Protocol::Plaintext), &dir).await;
    planned_rounds_then_halt(&mut fed.coordinator, &dir).await;
    fed.coordinator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_survives_a_restart() {
    let dir = tmp("resume");
    let cfg = config(&dir, Mechanism::Ddg, Protocol::SecaggPlus);
    let mut fed = start(cfg.clone(), &dir).await;
    fed.coordinator.run_round().await.unwrap();
    fed.coordinator.run_round().await.unwrap();
    let spent = fed.coordinator.ledger().unwrap().spent();
    fed.coordinator.shutdown().await.unwrap();
    drop(fed);
    let mut fed = start(cfg, &dir).await;
    assert_eq!(fed.coordinator.next_round(), 3);
    assert_eq!(fed.coordinator.ledger().unwrap().spent(), spent);
    fed.coordinator.run_round().await.unwrap();
    assert!(
        fed.coordinator.run_round().await.is_err(),
        "round 4 exceeds the plan"
    );
    fed.coordinator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_noise_without_secure_aggregation_is_refused() {
    let dir = tmp("refused");
    let err = FederationConfig::builder([4; 16], dir.join("checkpoint.bin"))
        .protocol(Protocol::Plaintext)
        .dp(dp(Mechanism::Ddg))
        .build()
        .expect_err("refused");
    assert!(
        matches!(
            err,
            FlError::Config {
                key: "dp.mechanism",
                ..
            }
        ) && err.to_string().contains("needs secure aggregation"),
        "{err}"
    );
}
