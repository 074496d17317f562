//! A federation in one process: rounds, dropouts, aborts, resume, transcripts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::{LocalTrainingConfig, ParamLayout, Strategy};
use tessera_fl::{
    Coordinator, Egress, FederationConfig, KnownUpdateTrainer, Protocol, SiteOptions, SiteSummary,
    run_site,
};
use tessera_net::transcript::{TranscriptWriter, verify};
use tessera_secagg::simulation::test_identities;
use tessera_secagg::{IdentityKeyPair, Phase, Roster, SiteId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const DIM: usize = 6;

fn layout() -> ParamLayout {
    KnownUpdateTrainer::layout_for(DIM).unwrap()
}

fn step(i: u32) -> f32 {
    0.01 * (i as f32 + 1.0)
}

fn samples(i: u32) -> u64 {
    10 * (u64::from(i) + 1)
}

struct Federation {
    coordinator: Coordinator,
    sites: Vec<JoinHandle<SiteSummary>>,
    transcripts: Vec<(PathBuf, Arc<IdentityKeyPair>)>,
}

fn config(dir: &std::path::Path) -> FederationConfig {
    FederationConfig {
        session: [3; 16],
        strategy: Strategy::FedAvg,
        training: LocalTrainingConfig {
            steps: 1,
            batch_size: 1,
            learning_rate: 0.0,
            proximal_mu: 0.0,
            seed: 0,
        },
        protocol: Protocol::Secagg,
        dropout_rate: 0.05,
        corruption_rate: 0.0,
        bits: 32,
        clip: 1.0,
        max_weight: 1000,
        training_timeout: Duration::from_secs(5),
        phase_timeout: Duration::from_millis(400),
        checkpoint: dir.join("checkpoint.bin"),
    }
}

fn start(dir: &std::path::Path, n: u32, silent: &BTreeMap<u32, (u64, Phase)>) -> Federation {
    let ids: Vec<SiteId> = (0..n).map(SiteId).collect();
    let (identities, roster): (Vec<Arc<IdentityKeyPair>>, Arc<Roster>) =
        test_identities(&ids, [8; 32]);
    let (inbox_tx, inbox_rx) = mpsc::channel(256);
    let mut links = BTreeMap::new();
    let mut sites = Vec::new();
    let mut transcripts = Vec::new();
    for (i, identity) in identities.into_iter().enumerate() {
        let id = SiteId(i as u32);
        let (to_site, site_rx) = mpsc::channel(64);
        links.insert(id, to_site);
        let (egress_tx, mut egress_rx) = mpsc::channel::<Vec<u8>>(64);
        // The link: tags each message with the sender, as an authenticated connection does.
        let inbox = inbox_tx.clone();
        tokio::spawn(async move {
            while let Some(bytes) = egress_rx.recv().await {
                if inbox.send((id, bytes)).await.is_err() {
                    break;
                }
            }
        });
        let path = dir.join(format!("site-{i}.transcript"));
        transcripts.push((path.clone(), identity.clone()));
        let egress = Egress::new(
            egress_tx,
            TranscriptWriter::open(&path, identity.clone()).unwrap(),
        );
        let opts = SiteOptions {
            id,
            identity,
            roster: roster.clone(),
            seed: [i as u8; 32],
            silent_from: silent.get(&(i as u32)).copied(),
        };
        let mut trainer = KnownUpdateTrainer::new(DIM, step(i as u32), samples(i as u32)).unwrap();
        sites.push(tokio::spawn(async move {
            run_site(opts, &mut trainer, site_rx, egress).await.unwrap()
        }));
    }
    let coordinator = Coordinator::new(
        config(dir),
        roster,
        layout(),
        vec![0.5; DIM],
        links,
        inbox_rx,
    )
    .unwrap();
    Federation {
        coordinator,
        sites,
        transcripts,
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_with_dropouts_aborts_resume_and_transcripts() {
    let dir = tmp("rounds");
    // site 3 goes silent in round 2 before its masked input; in round 3 sites 0, 1 and 2
    // go silent before sharing keys (3 > n − t = 2 with n = 5, t = 3), so round 3 aborts.
    let silent = BTreeMap::from([
        (3, (2, Phase::MaskedInput)),
        (0, (3, Phase::ShareKeys)),
        (1, (3, Phase::ShareKeys)),
        (2, (3, Phase::ShareKeys)),
    ]);
    let mut fed = start(&dir, 5, &silent);
    let tolerance = 1e-4;
    let mut expected = 0.5f32;

    let r1 = fed.coordinator.run_round().await.unwrap();
    assert_eq!(
        r1.contributors,
        (0..5).map(SiteId).collect::<Vec<_>>(),
        "{r1:?}"
    );
    expected += mean_step(&[0, 1, 2, 3, 4]);
    assert!(
        fed.coordinator
            .global()
            .iter()
            .all(|g| (g - expected).abs() < tolerance),
        "{:?} vs {expected}",
        fed.coordinator.global()
    );

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
    assert!(
        fed.coordinator
            .global()
            .iter()
            .all(|g| (g - expected).abs() < tolerance)
    );

    let r3 = fed.coordinator.run_round().await.unwrap();
    assert!(
        r3.aborted
            .as_deref()
            .is_some_and(|a| a.contains("fewer than the threshold")),
        "{r3:?}"
    );
    assert!(
        fed.coordinator
            .global()
            .iter()
            .all(|g| (g - expected).abs() < tolerance),
        "an aborted round changes nothing"
    );

    let r4 = fed.coordinator.run_round().await.unwrap();
    assert_eq!(r4.contributors.len(), 5, "the next round proceeds");
    expected += mean_step(&[0, 1, 2, 3, 4]);
    assert!(
        fed.coordinator
            .global()
            .iter()
            .all(|g| (g - expected).abs() < tolerance)
    );
    let global_before = fed.coordinator.global().to_vec();
    fed.coordinator.shutdown().await;
    for s in fed.sites {
        let summary = s.await.unwrap();
        assert_eq!(summary.rounds_started, 4);
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    }

    // Every site's transcript verifies and shows only protocol messages: round 2's
    // silent site sent no masked input then.
    for (i, (path, identity)) in fed.transcripts.iter().enumerate() {
        let s = verify(path, &identity.public()).unwrap();
        let kinds: Vec<&str> = s.by_kind.keys().map(String::as_str).collect();
        for k in &kinds {
            assert!(
                [
                    "advertise-keys",
                    "share-keys",
                    "masked-input",
                    "consistency-signature",
                    "unmask-shares"
                ]
                .contains(k),
                "{k}"
            );
        }
        let masked = s.by_kind.get("masked-input").map_or(0, |c| c.0);
        // round 3 aborted after sharing keys, so nobody sent a masked input in it
        let expected_masked = if i == 3 { 2 } else { 3 };
        assert_eq!(masked, expected_masked, "site {i}");
    }

    // A restarted coordinator resumes after the last completed round with the same model.
    let (_tx, rx) = mpsc::channel(1);
    let resumed = Coordinator::new(
        config(&dir),
        test_identities(&[SiteId(0)], [8; 32]).1,
        layout(),
        vec![0.0; DIM],
        BTreeMap::new(),
        rx,
    )
    .unwrap();
    assert_eq!(resumed.next_round(), 5);
    assert_eq!(resumed.global(), global_before.as_slice());
    let mut other = config(&dir);
    other.session = [4; 16];
    let (_tx, rx) = mpsc::channel(1);
    assert!(
        Coordinator::new(
            other,
            test_identities(&[SiteId(0)], [8; 32]).1,
            layout(),
            vec![0.0; DIM],
            BTreeMap::new(),
            rx
        )
        .is_err()
    );
}
