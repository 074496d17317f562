//! Empirical privacy audit in one run: canary sites through the real coordinator and
//! site loops (secure aggregation, the DP codec). With distributed noise the audit's
//! lower bound stays below the ledger's ε (a bound above it would mean broken noise or
//! accounting); without noise the same audit finds a clearly positive ε (it has power).

use std::collections::BTreeMap;
use std::path::PathBuf;
use tessera_core::Strategy;
use tessera_core::seed::RootSeed;
use tessera_dp::audit::{epsilon_lower_bound, guess};
use tessera_dp::{DpConfig, Mechanism};
use tessera_fl::canary::Canaries;
use tessera_fl::{FederationConfig, KnownUpdateTrainer, Protocol, Weighting, memory};

const DIM: usize = 1024;
const CANARIES: usize = 160;
const ROUNDS: u64 = 3;
const CLIP: f64 = 1.0;
const DELTA: f64 = 1e-5;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-canary-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the audit; returns (lower bound at 95%, claimed ε from the ledger).
async fn audit(name: &str, mechanism: Mechanism, epsilon: f64) -> (f64, Option<f64>) {
    let dir = tmp(name);
    let layout = KnownUpdateTrainer::layout_for(DIM).unwrap();
    let private = mechanism != Mechanism::None;
    let canaries = Canaries::new(
        &layout,
        CANARIES,
        CLIP as f32,
        &Strategy::FedAvg,
        private,
        [9; 32],
    );
    let dp = if private {
        DpConfig {
            mechanism,
            epsilon,
            delta: DELTA,
            rounds: ROUNDS,
            l2_clip: CLIP,
            ..Default::default()
        }
    } else {
        DpConfig::default()
    };
    let config = FederationConfig::builder([6; 16], dir.join("checkpoint.bin"))
        .protocol(Protocol::SecaggPlus)
        .codec(if private { 24 } else { 32 }, 1.0, 1)
        .weighting(Weighting::Uniform)
        .dp(dp)
        .build()
        .unwrap();
    let mut fed = memory::start(
        config,
        layout,
        vec![0.0; DIM],
        canaries.trainers(),
        &BTreeMap::new(),
        &dir,
        RootSeed::from_experiment(8),
    )
    .await
    .unwrap();
    let mut movements = Vec::new();
    let mut before = fed.coordinator.global().to_vec();
    for _ in 0..ROUNDS {
        let report = fed.coordinator.run_round().await.unwrap();
        assert!(report.aborted.is_none(), "{report:?}");
        let after = fed.coordinator.global().to_vec();
        movements.push(after.iter().zip(&before).map(|(a, b)| a - b).collect());
        before = after;
    }
    let claimed = fed.coordinator.ledger().map(|l| l.spent());
    fed.coordinator.shutdown().await.unwrap();
    let scores = canaries.scores(&movements);
    let (r, v) = guess(&scores, canaries.included(), 40, 40);
    let bound = epsilon_lower_bound(CANARIES, r, v, DELTA, 0.95);
    eprintln!("{name}: {v} of {r} right, ε ≥ {bound:.3} (claimed {claimed:?})");
    std::fs::remove_dir_all(&dir).unwrap();
    (bound, claimed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_has_power_and_never_exceeds_the_claim() {
    let (open, claimed) = audit("none", Mechanism::None, 0.0).await;
    assert!(claimed.is_none());
    assert!(
        open > 2.0,
        "without noise the canaries are found: ε ≥ {open}"
    );
    for epsilon in [2.0] {
        let (bound, claimed) = audit(&format!("ddg-{epsilon}"), Mechanism::Ddg, epsilon).await;
        let claimed = claimed.expect("a DP run has a ledger");
        assert!(claimed <= epsilon + 1e-9);
        assert!(
            bound <= claimed,
            "audit ε ≥ {bound} exceeds the claimed {claimed}"
        );
    }
}
