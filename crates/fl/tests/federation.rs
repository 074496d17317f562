//! A federation in one process: rounds, dropouts at every phase, aborts, resume,
//! transcripts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tessera_core::seed::RootSeed;
use tessera_core::{ParamLayout, Strategy};
use tessera_fl::checkpoint::CheckpointProblem;
use tessera_fl::wire::WithdrawReason;
use tessera_fl::{
    AbortCause, Coordinator, FederationConfig, FlError, KnownUpdateTrainer, Protocol, memory,
};
use tessera_net::transcript::verify;
use tessera_secagg::{AbortReason, Phase, SiteId};
use tokio::sync::mpsc;

const DIM: usize = 6;
const PHASES: [Phase; 5] = [
    Phase::AdvertiseKeys,
    Phase::ShareKeys,
    Phase::MaskedInput,
    Phase::ConsistencyCheck,
    Phase::Unmasking,
];

fn layout() -> ParamLayout {
    KnownUpdateTrainer::layout_for(DIM).unwrap()
}

fn step(i: u32) -> f32 {
    0.01 * (i as f32 + 1.0)
}

fn samples(i: u32) -> u64 {
    10 * (u64::from(i) + 1)
}

fn root() -> RootSeed {
    RootSeed::from_experiment(8)
}

/// Defaults, and no timing: dropouts withdraw explicitly, so no test waits for a
/// deadline.
fn config(dir: &Path) -> FederationConfig {
    FederationConfig::builder([3; 16], dir.join("checkpoint.bin"))
        .codec(32, 1.0, 1000)
        .build()
        .unwrap()
}

async fn start(
    dir: &Path,
    n: u32,
    silent: &BTreeMap<SiteId, BTreeMap<u64, Phase>>,
) -> memory::MemoryFederation {
    start_with(config(dir), dir, n, silent).await
}

async fn start_with(
    cfg: FederationConfig,
    dir: &Path,
    n: u32,
    silent: &BTreeMap<SiteId, BTreeMap<u64, Phase>>,
) -> memory::MemoryFederation {
    let trainers = (0..n)
        .map(|i| KnownUpdateTrainer::new(DIM, step(i), samples(i)).unwrap())
        .collect();
    memory::start(cfg, layout(), vec![0.5; DIM], trainers, silent, dir, root())
        .await
        .unwrap()
}

fn resume(cfg: FederationConfig) -> Result<Coordinator, FlError> {
    let roster = memory::identities(&root(), cfg.session, &[SiteId(0)])
        .unwrap()
        .1;
    let (_tx, rx) = mpsc::channel(1);
    Coordinator::new(cfg, roster, layout(), vec![0.0; DIM], rx, [0; 32])
}

/// The weighted mean step of the given sites.
fn mean_step(sites: &[u32]) -> f32 {
    let w: u64 = sites.iter().map(|&i| samples(i)).sum();
    sites
        .iter()
        .map(|&i| step(i) * samples(i) as f32)
        .sum::<f32>()
        / w as f32
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-fl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TOLERANCE: f32 = 1e-4;

fn assert_global(c: &Coordinator, expected: f32) {
    assert!(
        c.global().iter().all(|g| (g - expected).abs() < TOLERANCE),
        "{:?} vs {expected}",
        c.global()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_with_dropouts_aborts_resume_and_transcripts() {
    let dir = tmp("rounds");
    // site 3 goes silent in round 2 before its masked input; in round 3 sites 0, 1 and 2
    // go silent before sharing keys (3 > n − t = 2 with n = 5, t = 3), so round 3 aborts.
    let silent = BTreeMap::from([
        (SiteId(3), BTreeMap::from([(2, Phase::MaskedInput)])),
        (SiteId(0), BTreeMap::from([(3, Phase::ShareKeys)])),
        (SiteId(1), BTreeMap::from([(3, Phase::ShareKeys)])),
        (SiteId(2), BTreeMap::from([(3, Phase::ShareKeys)])),
    ]);
    let mut fed = start(&dir, 5, &silent).await;
    let mut expected = 0.5f32;

    let r1 = fed.coordinator.run_round().await.unwrap();
    assert_eq!(
        r1.contributors,
        (0..5).map(SiteId).collect::<Vec<_>>(),
        "{r1:?}"
    );
    expected += mean_step(&[0, 1, 2, 3, 4]);
    assert_global(&fed.coordinator, expected);

    let r2 = fed.coordinator.run_round().await.unwrap();
    assert_eq!(
        r2.contributors,
        vec![SiteId(0), SiteId(1), SiteId(2), SiteId(4)]
    );
    assert_eq!(
        r2.total_weight,
        samples(0) + samples(1) + samples(2) + samples(4)
    );
    expected += mean_step(&[0, 1, 2, 4]);
    assert_global(&fed.coordinator, expected);

    let r3 = fed.coordinator.run_round().await.unwrap();
    assert!(
        matches!(
            r3.aborted,
            Some(AbortCause::SecAgg(AbortReason::TooFewSurvivors { .. }))
        ),
        "{r3:?}"
    );
    assert_eq!(r3.left, vec![SiteId(0), SiteId(1), SiteId(2)]);
    assert_global(&fed.coordinator, expected);

    let r4 = fed.coordinator.run_round().await.unwrap();
    assert_eq!(r4.contributors.len(), 5, "the next round proceeds");
    expected += mean_step(&[0, 1, 2, 3, 4]);
    assert_global(&fed.coordinator, expected);
    let global_before = fed.coordinator.global().to_vec();
    fed.coordinator.shutdown().await.unwrap();
    for (i, s) in fed.sites.into_iter().enumerate() {
        let summary = s.await.unwrap().unwrap();
        assert_eq!(summary.rounds_started, 4);
        assert!(summary.problems.is_empty(), "{:?}", summary.problems);
        assert!(summary.shut_down);
        // rounds 1, 2 and 4 completed; site 3 left round 2 before masking
        assert_eq!(summary.rounds_completed, 3);
        assert_eq!(
            summary.rounds_contributed,
            if i == 3 { 2 } else { 3 },
            "site {i}"
        );
    }

    // Every site's transcript verifies and shows only protocol messages.
    let ids: Vec<SiteId> = (0..5).map(SiteId).collect();
    let (identities, _) = memory::identities(&root(), [3; 16], &ids).unwrap();
    for (i, identity) in identities.iter().enumerate() {
        let s = verify(
            &dir.join(format!("site-{i}.transcript")),
            &identity.public(),
        )
        .unwrap();
        for k in s.bytes_by_kind().keys() {
            assert!(
                [
                    "advertise-keys",
                    "share-keys",
                    "masked-input",
                    "consistency-signature",
                    "unmask-shares",
                    "withdraw",
                    "head"
                ]
                .contains(&k.as_str()),
                "{k}"
            );
        }
        // round 3 aborted after sharing keys; site 3 was silent before masking in round 2
        let masked = s.bytes_by_kind().get("masked-input").map_or(0, |c| c.0);
        assert_eq!(masked, if i == 3 { 2 } else { 3 }, "site {i}");
    }

    // A restarted coordinator resumes after the last completed round with the same model.
    let resumed = resume(config(&dir)).unwrap();
    assert_eq!(resumed.next_round(), 5);
    assert_eq!(resumed.global(), global_before.as_slice());
    // ... but not under another session or strategy,
    let mut other = config(&dir);
    other.session = [4; 16];
    let refused = |r: Result<Coordinator, FlError>| match r {
        Err(FlError::Checkpoint { problem, .. }) => problem,
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("resumed"),
    };
    assert!(matches!(
        refused(resume(other)),
        CheckpointProblem::SettingsChanged { key: "session", .. }
    ));
    let mut other = config(&dir);
    other.strategy = Strategy::FedAvgM {
        server_lr: 1.0,
        momentum: 0.9,
    };
    assert!(matches!(
        refused(resume(other)),
        CheckpointProblem::SettingsChanged {
            key: "strategy",
            ..
        }
    ));
    // ... and not from a damaged file (4 bytes overwritten in the model).
    let path = dir.join("checkpoint.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at..at + 4].copy_from_slice(&[0xff; 4]);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(refused(resume(config(&dir))), CheckpointProblem::Corrupt);
}

/// n − t = 2 sites drop at each phase in turn: every round completes with exactly the
/// sites that sent their masked input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_to_n_minus_t_dropouts_at_every_phase() {
    let dir = tmp("phases");
    let mut silent: BTreeMap<SiteId, BTreeMap<u64, Phase>> = BTreeMap::new();
    for (r, phase) in PHASES.iter().enumerate() {
        for site in [1, 4] {
            silent
                .entry(SiteId(site))
                .or_default()
                .insert(r as u64 + 1, *phase);
        }
    }
    let mut fed = start(&dir, 5, &silent).await;
    let mut expected = 0.5f32;
    for phase in PHASES {
        let report = fed.coordinator.run_round().await.unwrap();
        assert!(report.aborted.is_none(), "{phase}: {report:?}");
        let contributors: Vec<u32> = if phase <= Phase::MaskedInput {
            vec![0, 2, 3]
        } else {
            vec![0, 1, 2, 3, 4]
        };
        assert_eq!(
            report.contributors,
            contributors.iter().map(|&i| SiteId(i)).collect::<Vec<_>>(),
            "{phase}"
        );
        expected += mean_step(&contributors);
        assert_global(&fed.coordinator, expected);
    }
    fed.coordinator.shutdown().await.unwrap();
}

/// With a sampled fraction, each round takes the drawn sites only, and only they move
/// the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_fraction_of_sites_takes_part() {
    let dir = tmp("sampled");
    let mut cfg = config(&dir);
    cfg.sample_fraction = 0.5;
    let mut fed = start_with(cfg, &dir, 8, &BTreeMap::new()).await;
    let mut expected = 0.5f32;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let report = fed.coordinator.run_round().await.unwrap();
        assert_eq!(report.participants.len(), 4);
        assert_eq!(report.contributors, report.participants);
        let ids: Vec<u32> = report.contributors.iter().map(|s| s.0).collect();
        expected += mean_step(&ids);
        assert_global(&fed.coordinator, expected);
        seen.extend(ids);
    }
    assert!(
        seen.len() > 4,
        "different rounds draw different sites: {seen:?}"
    );
    fed.coordinator.shutdown().await.unwrap();
}

/// The plaintext baseline runs through the same loops and reaches the same model; its
/// transcripts show the unmasked updates for what they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_baseline_reaches_the_same_model() {
    let dir = tmp("plain");
    let mut cfg = config(&dir);
    cfg.protocol = Protocol::Plaintext;
    let mut fed = start_with(cfg, &dir, 4, &BTreeMap::new()).await;
    let report = fed.coordinator.run_round().await.unwrap();
    assert_eq!(report.contributors.len(), 4);
    assert_eq!(report.total_weight, (0..4).map(samples).sum::<u64>());
    assert_global(&fed.coordinator, 0.5 + mean_step(&[0, 1, 2, 3]));
    fed.coordinator.shutdown().await.unwrap();
    let ids: Vec<SiteId> = (0..4).map(SiteId).collect();
    let (identities, _) = memory::identities(&root(), [3; 16], &ids).unwrap();
    let s = verify(&dir.join("site-0.transcript"), &identities[0].public()).unwrap();
    let kinds = s.bytes_by_kind();
    assert!(kinds.contains_key("plain-update"), "{kinds:?}");
    assert!(
        kinds
            .keys()
            .all(|k| ["plain-update", "head"].contains(&k.as_str()))
    );
}

/// Sites draw their rounding from a per-round stream, and secure aggregation's sum is
/// exact in the ring: plain FedAvg and SecAgg(+) give bitwise-identical models.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_and_plain_aggregation_give_identical_models() {
    let mut models = Vec::new();
    for protocol in [Protocol::Plaintext, Protocol::Secagg, Protocol::SecaggPlus] {
        let dir = tmp(&format!("identical-{protocol:?}"));
        let cfg = FederationConfig {
            protocol,
            // A coarse grid makes the stochastic rounding visible in every coordinate.
            bits: 12,
            ..config(&dir)
        };
        cfg.validate().unwrap();
        let mut fed = start_with(cfg, &dir, 4, &BTreeMap::new()).await;
        for _ in 0..3 {
            let report = fed.coordinator.run_round().await.unwrap();
            assert!(report.aborted.is_none());
        }
        models.push(fed.coordinator.global().to_vec());
        fed.coordinator.shutdown().await.unwrap();
    }
    assert_eq!(models[0], models[1]);
    assert_eq!(models[0], models[2]);
    // and the rounding did act: the model is not the exact weighted mean
    let exact = 0.5 + 3.0 * mean_step(&[0, 1, 2, 3]);
    assert!(models[0].iter().any(|g| *g != exact));
}

/// FedAvgM's momentum is in the checkpoint: a federation stopped after two rounds and
/// resumed for a third ends exactly where one that ran three rounds straight does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedavgm_resumes_exactly() {
    let momentum = Strategy::FedAvgM {
        server_lr: 1.0,
        momentum: 0.9,
    };
    let straight = tmp("momentum-straight");
    let cfg = config(&straight);
    let cfg = FederationConfig {
        strategy: momentum.clone(),
        ..cfg
    };
    let mut fed = start_with(cfg, &straight, 3, &BTreeMap::new()).await;
    for _ in 0..3 {
        fed.coordinator.run_round().await.unwrap();
    }
    let expected = fed.coordinator.global().to_vec();
    fed.coordinator.shutdown().await.unwrap();

    let resumed = tmp("momentum-resumed");
    let cfg = FederationConfig {
        strategy: momentum,
        ..config(&resumed)
    };
    let mut fed = start_with(cfg.clone(), &resumed, 3, &BTreeMap::new()).await;
    for _ in 0..2 {
        fed.coordinator.run_round().await.unwrap();
    }
    fed.coordinator.shutdown().await.unwrap();
    drop(fed);
    let mut fed = start_with(cfg, &resumed, 3, &BTreeMap::new()).await;
    assert_eq!(fed.coordinator.next_round(), 3);
    fed.coordinator.run_round().await.unwrap();
    assert_eq!(fed.coordinator.global(), expected.as_slice());
    fed.coordinator.shutdown().await.unwrap();
}

/// Two experiment seeds give every site different keys (the old derivation wrote the
/// site id over the seed, so every seed below 2^32 gave the same ones).
#[test]
fn experiment_seeds_give_different_site_keys() {
    let ids = [SiteId(0), SiteId(1)];
    let a = memory::identities(&RootSeed::from_experiment(1), [3; 16], &ids)
        .unwrap()
        .1;
    let b = memory::identities(&RootSeed::from_experiment(2), [3; 16], &ids)
        .unwrap()
        .1;
    for id in ids {
        assert_ne!(a.get(id), b.get(id));
    }
    assert_ne!(a.get(ids[0]), a.get(ids[1]));
}

/// A site whose model does not match the federation's withdraws at once, saying why,
/// and the round goes on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_with_another_model_withdraws_and_says_why() {
    let dir = tmp("mismatch");
    let mut trainers: Vec<KnownUpdateTrainer> = (0..3)
        .map(|i| KnownUpdateTrainer::new(DIM, step(i), samples(i)).unwrap())
        .collect();
    trainers.push(KnownUpdateTrainer::new(DIM + 1, 0.5, 10).unwrap());
    let mut fed = memory::start(
        config(&dir),
        layout(),
        vec![0.5; DIM],
        trainers,
        &BTreeMap::new(),
        &dir,
        root(),
    )
    .await
    .unwrap();
    let report = fed.coordinator.run_round().await.unwrap();
    assert!(report.completed(), "{report:?}");
    assert_eq!(report.contributors, vec![SiteId(0), SiteId(1), SiteId(2)]);
    assert_eq!(
        report.withdrawals,
        vec![(
            SiteId(3),
            WithdrawReason::ModelShape {
                got: DIM,
                expected: DIM + 1
            }
        )]
    );
    fed.coordinator.shutdown().await.unwrap();
    let summaries: Vec<_> = futures_join(fed.sites).await;
    assert_eq!(summaries[3].rounds_contributed, 0);
    assert_eq!(summaries[3].problems.len(), 1);
}

async fn futures_join(
    sites: Vec<tokio::task::JoinHandle<Result<tessera_fl::SiteSummary, FlError>>>,
) -> Vec<tessera_fl::SiteSummary> {
    let mut out = Vec::new();
    for s in sites {
        out.push(s.await.unwrap().unwrap());
    }
    out
}
