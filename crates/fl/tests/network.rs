//! A hostile site on a live QUIC connection: undecodable messages, a forged sender, a
//! replay of an old round's message and an oversized frame neither crash the
//! coordinator nor spoil the honest sites' rounds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tessera_core::seed::RootSeed;
use tessera_fl::SitePolicy;
use tessera_fl::facts::{RosterFacts, open_transcript};
use tessera_fl::wire::{self, ToCoordinator, ToSite};
use tessera_fl::{
    Coordinator, Egress, FederationConfig, KnownUpdateTrainer, RejectReason, SiteIdentity,
    SiteMachine, accept_sites, reconnecting_link, run_site,
};
use tessera_net::frame::{CHUNK, MAX_MESSAGE, read_message, write_message};
use tessera_net::pki::{Role, SignedRoster, init, issue, load_identity};
use tessera_net::quic::{Credentials, client, connect, server};
use tessera_net::transcript::Durability;
use tessera_secagg::{Party, PlainVector, Roster, Round, RoundConfig, Site, SiteId};

const DIM: usize = 8;

/// A federation PKI for `sites` sites and the coordinator's endpoint on a free port.
fn federation(name: &str, sites: u32) -> (PathBuf, SignedRoster, Arc<Roster>, quinn::Endpoint) {
    let dir = std::env::temp_dir().join(format!("tessera-fl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    init(&dir).unwrap();
    issue(&dir, "coordinator", Role::Coordinator).unwrap();
    for i in 0..sites {
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
    (dir, roster, identities, endpoint)
}

/// An honest site `i` dialling the coordinator at `addr`.
fn spawn_honest_site(dir: &Path, identities: &Arc<Roster>, addr: SocketAddr, i: u32) {
    let (dir, identities) = (dir.to_owned(), identities.clone());
    tokio::spawn(async move {
        let name = format!("site-{i}");
        let identity = Arc::new(load_identity(&dir.join(format!("{name}.identity"))).unwrap());
        let ep = client(&Credentials::load(&dir, &name).unwrap(), false).unwrap();
        let (link, _) = reconnecting_link(ep, addr, "coordinator".into(), Duration::from_secs(10));
        let transcript = open_transcript(
            &dir.join(format!("{name}.transcript")),
            identity.clone(),
            SiteId(i),
            &RosterFacts::unsigned(),
            &SitePolicy::permissive(),
            false,
            Durability::Synced,
        )
        .unwrap();
        let who = SiteIdentity {
            id: SiteId(i),
            identity,
            roster: identities,
        };
        let layout = KnownUpdateTrainer::layout_for(DIM).unwrap();
        let machine = SiteMachine::new(who, layout, RootSeed::from_experiment(u64::from(i)))
            .with_policy(tessera_fl::SitePolicy::permissive());
        let mut trainer = KnownUpdateTrainer::new(DIM, 0.01, 10).unwrap();
        let (egress, inbox) = Egress::open(link, transcript);
        run_site(machine, &mut trainer, egress, inbox, None)
            .await
            .unwrap();
    });
}

fn config(
    dir: &Path,
    session: u8,
    training_timeout: Duration,
    phase_timeout: Duration,
) -> FederationConfig {
    FederationConfig::builder([session; 16], dir.join("checkpoint.bin"))
        .codec(24, 1.0, 100)
        .timeouts(training_timeout, phase_timeout)
        .build()
        .unwrap()
}

/// The coordinator's driver over the endpoint's links, once `n` sites have joined.
async fn coordinator(
    endpoint: &quinn::Endpoint,
    roster: &SignedRoster,
    config: FederationConfig,
    n: usize,
) -> Coordinator {
    let identities = Arc::new(roster.identities().unwrap());
    let events = accept_sites(endpoint, roster);
    let layout = KnownUpdateTrainer::layout_for(DIM).unwrap();
    let mut c =
        Coordinator::new(config, identities, layout, vec![0.0; DIM], events, [0; 32]).unwrap();
    assert_eq!(c.wait_for_sites(n, Duration::from_secs(30)).await, n);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_site_cannot_disturb_the_round() {
    let (dir, roster, identities, endpoint) = federation("network", 4);
    let addr = endpoint.local_addr().unwrap();
    for i in 0..3 {
        spawn_honest_site(&dir, &identities, addr, i);
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
            write_message(&mut send, b"").await.unwrap();
            let mut rng = tessera_secagg::simulation::site_rng([3; 32], SiteId(3));
            let mut first_advert: Option<Vec<u8>> = None;
            while let Ok(Some(bytes)) = read_message(&mut recv, MAX_MESSAGE).await {
                let Ok(ToSite::RoundStart(start)) = wire::decode::<ToSite>(&bytes) else {
                    continue;
                };
                if start.params.round == Round(3) {
                    // a frame announcing more than a piece may hold: the link must end
                    let _ = send.write_all(&((CHUNK as u32) + 2).to_be_bytes()).await;
                    let _ = send.write_all(&[0u8; 64]).await;
                    continue;
                }
                // bytes that are not a message
                write_message(&mut send, &[0xde, 0xad, 0xbe, 0xef])
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
                write_message(
                    &mut send,
                    &wire::encode(&ToCoordinator::SecAgg(forged)).unwrap(),
                )
                .await
                .unwrap();
                match &first_advert {
                    // round 1: the real advertisement, then silence (a dropout)
                    None => {
                        let bytes = wire::encode(&ToCoordinator::SecAgg(advert)).unwrap();
                        write_message(&mut send, &bytes).await.unwrap();
                        first_advert = Some(bytes);
                    }
                    // round 2: a replay of round 1's advertisement instead
                    Some(old) => write_message(&mut send, old).await.unwrap(),
                }
            }
        });
    }

    let config = config(&dir, 9, Duration::from_secs(2), Duration::from_millis(500));
    let mut coordinator = coordinator(&endpoint, &roster, config, 4).await;
    for round in 1..=2u64 {
        let report = coordinator.run_round().await.unwrap();
        assert!(report.aborted.is_none(), "round {round}: {report:?}");
        // The junk and the forgery are refused, and the report says so.
        let hostile: Vec<&RejectReason> = report
            .rejected
            .iter()
            .filter(|r| r.from == SiteId(3))
            .map(|r| &r.reason)
            .collect();
        assert!(
            hostile.iter().any(|r| matches!(r, RejectReason::Wire(_))),
            "round {round}: {hostile:?}"
        );
        assert!(
            hostile
                .iter()
                .any(|r| matches!(r, RejectReason::Aggregator(_))),
            "round {round}: {hostile:?}"
        );
        assert!(report.rejected.iter().all(|r| r.from == SiteId(3)));
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
    // Its link closed mid-round: it left at once, without a deadline.
    assert_eq!(report.left, vec![SiteId(3)]);
    coordinator.shutdown().await.unwrap();
}

/// A roster site that connects after the federation has started — as a site re-dialling
/// after a network failure does — is swapped in and takes part from the next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_connecting_later_joins_the_next_round() {
    let (dir, roster, identities, endpoint) = federation("join", 3);
    let addr = endpoint.local_addr().unwrap();
    spawn_honest_site(&dir, &identities, addr, 0);
    spawn_honest_site(&dir, &identities, addr, 1);
    let config = config(&dir, 5, Duration::from_secs(5), Duration::from_secs(2));
    let mut coordinator = coordinator(&endpoint, &roster, config, 2).await;
    let r1 = coordinator.run_round().await.unwrap();
    assert_eq!(r1.participants, vec![SiteId(0), SiteId(1)]);
    spawn_honest_site(&dir, &identities, addr, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r2 = coordinator.run_round().await.unwrap();
    assert_eq!(r2.participants, vec![SiteId(0), SiteId(1), SiteId(2)]);
    assert_eq!(r2.contributors, r2.participants);
    coordinator.shutdown().await.unwrap();
}

/// The `paper` profile's detector has 21 545 414 parameters: its model and masked
/// inputs (about 86 MB each) exceed one frame and travel as a run of bounded pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paper_sized_model_crosses_quic() {
    const PAPER: usize = 21_545_414;
    let dir = std::env::temp_dir().join(format!("tessera-fl-paper-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = FederationConfig::builder([2; 16], dir.join("checkpoint.bin"))
        .codec(32, 1.0, 10)
        .timeouts(Duration::from_secs(600), Duration::from_secs(600))
        .build()
        .unwrap();
    let trainers = vec![
        KnownUpdateTrainer::new(PAPER, 0.01, 1).unwrap(),
        KnownUpdateTrainer::new(PAPER, 0.03, 1).unwrap(),
    ];
    let layout = KnownUpdateTrainer::layout_for(PAPER).unwrap();
    let mut fed = tessera_fl::loopback::start(
        config,
        layout,
        vec![0.0; PAPER],
        trainers,
        &Default::default(),
        &dir,
        RootSeed::from_experiment(1),
    )
    .await
    .unwrap();
    let report = fed.coordinator.run_round().await.unwrap();
    assert!(report.completed(), "{report:?}");
    assert_eq!(report.contributors.len(), 2);
    let g = fed.coordinator.global();
    assert!((g[0] - 0.02).abs() < 1e-4 && (g[PAPER - 1] - 0.02).abs() < 1e-4);
    let (up, down) = fed.coordinator.traffic().snapshot();
    assert!(
        up > 2 * 4 * PAPER as u64 && down > 2 * 4 * PAPER as u64,
        "{up} {down}"
    );
    fed.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// One site may not hold more than two connections (its link and a reconnection): a
/// third is refused and reported, so no site can exhaust the coordinator with links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_may_not_open_many_connections() {
    let (dir, roster, _identities, endpoint) = federation("many", 2);
    let addr = endpoint.local_addr().unwrap();
    let mut events = accept_sites(&endpoint, &roster);
    let mut conns = Vec::new();
    for _ in 0..3 {
        let ep = client(&Credentials::load(&dir, "site-0").unwrap(), false).unwrap();
        let conn = connect(&ep, addr, "coordinator").await.unwrap();
        if let Ok((mut send, _recv)) = conn.open_bi().await {
            let _ = write_message(&mut send, b"").await;
            conns.push((ep, conn, send));
        }
    }
    let (mut opened, mut refused) = (0, Vec::new());
    while opened + refused.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(tessera_fl::LinkEvent::Opened { .. })) => opened += 1,
            Ok(Some(tessera_fl::LinkEvent::Refused { reason, .. })) => refused.push(reason),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    assert_eq!(opened, 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|r| r.contains("already has 2 connections")),
        "{refused:?}"
    );
}

/// A peer that completes its handshake but never opens its stream (30 s allowed) does
/// not hold up another site joining: connections are served concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_does_not_hold_up_joins() {
    let (dir, roster, _identities, endpoint) = federation("silent-join", 2);
    let addr = endpoint.local_addr().unwrap();
    let mut events = accept_sites(&endpoint, &roster);
    let silent_ep = client(&Credentials::load(&dir, "site-0").unwrap(), false).unwrap();
    let _silent = connect(&silent_ep, addr, "coordinator").await.unwrap();
    let ep = client(&Credentials::load(&dir, "site-1").unwrap(), false).unwrap();
    let conn = connect(&ep, addr, "coordinator").await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    write_message(&mut send, b"").await.unwrap();
    let start = std::time::Instant::now();
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("site-1 joined while site-0 stayed silent");
    assert!(
        matches!(
            event,
            Some(tessera_fl::LinkEvent::Opened {
                site: SiteId(1),
                ..
            })
        ),
        "after {:?}",
        start.elapsed()
    );
}
