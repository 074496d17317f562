//! A hostile site on a live QUIC connection: undecodable messages, a forged sender, a
//! replay of an old round's message and an oversized frame neither crash the
//! coordinator nor spoil the honest sites' rounds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::{LocalTrainingConfig, Strategy};
use tessera_fl::wire::{self, ToCoordinator, ToSite};
use tessera_fl::{
    Coordinator, Egress, FederationConfig, KnownUpdateTrainer, Protocol, SiteOptions, accept_sites,
    open_link, run_site,
};
use tessera_net::frame::{MAX_FRAME, read_frame, write_frame};
use tessera_net::pki::{Role, SignedRoster, init, issue, load_identity};
use tessera_net::quic::{Credentials, client, connect, server};
use tessera_net::transcript::TranscriptWriter;
use tessera_secagg::{Party, PlainVector, Round, RoundConfig, Site, SiteId};

const DIM: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_site_cannot_disturb_the_round() {
    let dir = std::env::temp_dir().join(format!("tessera-fl-network-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    init(&dir).unwrap();
    issue(&dir, "coordinator", Role::Coordinator).unwrap();
    for i in 0..4 {
        issue(&dir, &format!("site-{i}"), Role::Site(SiteId(i))).unwrap();
    }
    let roster = SignedRoster::load(&dir.join("roster.json"), &dir.join("ca.pem")).unwrap();
    let identities = Arc::new(roster.identities().unwrap());
    let endpoint = server(
        ([127, 0, 0, 1], 0).into(),
        &Credentials::load(&dir, "coordinator").unwrap(),
        false,
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();

    // Three honest sites.
    for i in 0..3u32 {
        let (dir, identities) = (dir.clone(), identities.clone());
        tokio::spawn(async move {
            let name = format!("site-{i}");
            let identity = Arc::new(load_identity(&dir.join(format!("{name}.identity"))).unwrap());
            let ep = client(&Credentials::load(&dir, &name).unwrap(), false).unwrap();
            let conn = connect(&ep, addr, "coordinator").await.unwrap();
            let (tx, rx) = open_link(&conn).await.unwrap();
            let transcript =
                TranscriptWriter::open(&dir.join(format!("{name}.transcript")), identity.clone())
                    .unwrap();
            let opts = SiteOptions {
                id: SiteId(i),
                identity,
                roster: identities,
                seed: [i as u8; 32],
                silent: BTreeMap::new(),
            };
            let mut trainer = KnownUpdateTrainer::new(DIM, 0.01, 10).unwrap();
            run_site(opts, &mut trainer, rx, Egress::new(tx, transcript))
                .await
                .unwrap();
            drop(conn);
        });
    }

    // The hostile site: a valid certificate and identity, bad behaviour, on its own raw
    // stream so that it can also send what no honest link would.
    {
        let (dir, identities) = (dir.clone(), identities.clone());
        tokio::spawn(async move {
            let identity = Arc::new(load_identity(&dir.join("site-3.identity")).unwrap());
            let ep = client(&Credentials::load(&dir, "site-3").unwrap(), false).unwrap();
            let conn = connect(&ep, addr, "coordinator").await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            write_frame(&mut send, b"", MAX_FRAME).await.unwrap();
            let mut rng = tessera_secagg::simulation::site_rng([3; 32], SiteId(3));
            let mut first_advert: Option<Vec<u8>> = None;
            while let Ok(Some(bytes)) = read_frame(&mut recv, MAX_FRAME).await {
                let Ok(ToSite::RoundStart(start)) = wire::decode::<ToSite>(&bytes) else {
                    continue;
                };
                if start.params.round == Round(3) {
                    // a frame announcing more than the maximum: the link must end
                    let _ = send
                        .write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
                        .await;
                    let _ = send.write_all(&[0u8; 64]).await;
                    continue;
                }
                // bytes that are not a message
                write_frame(&mut send, &[0xde, 0xad, 0xbe, 0xef], MAX_FRAME)
                    .await
                    .unwrap();
                // a real advertisement, and a copy claiming to be site 0's
                let config = RoundConfig::new(start.params.clone()).unwrap();
                let input = PlainVector::zeros(config.modulus(), config.vector_len());
                let (_, advert) = Site::new(
                    config,
                    SiteId(3),
                    identity.clone(),
                    identities.clone(),
                    input,
                    &mut rng,
                )
                .unwrap();
                let mut forged = advert.clone();
                forged.header.sender = Party::Site(SiteId(0));
                write_frame(
                    &mut send,
                    &wire::encode(&ToCoordinator::SecAgg(forged)),
                    MAX_FRAME,
                )
                .await
                .unwrap();
                match &first_advert {
                    // round 1: the real advertisement, then silence (a dropout)
                    None => {
                        let bytes = wire::encode(&ToCoordinator::SecAgg(advert));
                        write_frame(&mut send, &bytes, MAX_FRAME).await.unwrap();
                        first_advert = Some(bytes);
                    }
                    // round 2: a replay of round 1's advertisement instead
                    Some(old) => write_frame(&mut send, old, MAX_FRAME).await.unwrap(),
                }
            }
        });
    }

    let links = accept_sites(&endpoint, &roster, 4, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(links.senders.len(), 4);
    let config = FederationConfig {
        session: [9; 16],
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
        bits: 24,
        clip: 1.0,
        max_weight: 100,
        sample_fraction: 1.0,
        training_timeout: Duration::from_secs(2),
        phase_timeout: Duration::from_millis(500),
        checkpoint: dir.join("checkpoint.bin"),
    };
    let layout = KnownUpdateTrainer::layout_for(DIM).unwrap();
    let mut coordinator = Coordinator::new(
        config,
        identities,
        layout,
        vec![0.0; DIM],
        links.senders,
        links.inbox,
    )
    .unwrap();
    for round in 1..=2u64 {
        let report = coordinator.run_round().await.unwrap();
        assert!(report.aborted.is_none(), "round {round}: {report:?}");
        assert_eq!(
            report.contributors,
            vec![SiteId(0), SiteId(1), SiteId(2)],
            "round {round}"
        );
        let expected = 0.01 * round as f32;
        assert!(
            coordinator
                .global()
                .iter()
                .all(|g| (g - expected).abs() < 1e-4),
            "{:?}",
            coordinator.global()
        );
    }

    // Round 3: the hostile site sends an oversized frame, which ends its link; the
    // coordinator carries on with the honest sites.
    let report = coordinator.run_round().await.unwrap();
    assert!(report.aborted.is_none(), "{report:?}");
    assert_eq!(report.contributors, vec![SiteId(0), SiteId(1), SiteId(2)]);
    coordinator.shutdown().await;
}

/// A roster site that connects after the federation has started — as a site re-dialling
/// after a network failure does — is swapped in and takes part from the next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_connecting_later_joins_the_next_round() {
    let dir = std::env::temp_dir().join(format!("tessera-fl-join-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    init(&dir).unwrap();
    issue(&dir, "coordinator", Role::Coordinator).unwrap();
    for i in 0..3 {
        issue(&dir, &format!("site-{i}"), Role::Site(SiteId(i))).unwrap();
    }
    let roster = SignedRoster::load(&dir.join("roster.json"), &dir.join("ca.pem")).unwrap();
    let identities = Arc::new(roster.identities().unwrap());
    let endpoint = server(
        ([127, 0, 0, 1], 0).into(),
        &Credentials::load(&dir, "coordinator").unwrap(),
        false,
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let spawn_site = |i: u32| {
        let (dir, identities) = (dir.clone(), identities.clone());
        tokio::spawn(async move {
            let name = format!("site-{i}");
            let identity = Arc::new(load_identity(&dir.join(format!("{name}.identity"))).unwrap());
            let ep = client(&Credentials::load(&dir, &name).unwrap(), false).unwrap();
            let (tx, rx) = tessera_fl::reconnecting_link(
                ep,
                addr,
                "coordinator".into(),
                Duration::from_secs(10),
            );
            let transcript =
                TranscriptWriter::open(&dir.join(format!("{name}.transcript")), identity.clone())
                    .unwrap();
            let opts = SiteOptions {
                id: SiteId(i),
                identity,
                roster: identities,
                seed: [i as u8; 32],
                silent: BTreeMap::new(),
            };
            let mut trainer = KnownUpdateTrainer::new(DIM, 0.01, 10).unwrap();
            run_site(opts, &mut trainer, rx, Egress::new(tx, transcript))
                .await
                .unwrap();
        })
    };
    spawn_site(0);
    spawn_site(1);
    let links = accept_sites(&endpoint, &roster, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let config = FederationConfig {
        session: [5; 16],
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
        bits: 24,
        clip: 1.0,
        max_weight: 100,
        sample_fraction: 1.0,
        training_timeout: Duration::from_secs(5),
        phase_timeout: Duration::from_secs(2),
        checkpoint: dir.join("checkpoint.bin"),
    };
    let layout = KnownUpdateTrainer::layout_for(DIM).unwrap();
    let mut coordinator = Coordinator::new(
        config,
        identities.clone(),
        layout,
        vec![0.0; DIM],
        links.senders,
        links.inbox,
    )
    .unwrap()
    .with_joins(links.joins);
    let r1 = coordinator.run_round().await.unwrap();
    assert_eq!(r1.participants, vec![SiteId(0), SiteId(1)]);
    spawn_site(2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r2 = coordinator.run_round().await.unwrap();
    assert_eq!(r2.participants, vec![SiteId(0), SiteId(1), SiteId(2)]);
    assert_eq!(r2.contributors, r2.participants);
    coordinator.shutdown().await;
}
