//! The coordinator's logic driven by hand, with no runtime, clock or timer: every
//! event is delivered explicitly, and a deadline passes only when a test says so.

use tessera_core::{LocalTrainer, Strategy};
use tessera_dp::{DpConfig, Mechanism};
use tessera_fl::wire::{self, ToCoordinator, WithdrawReason};
use tessera_fl::{
    AbortCause, Action, Event, FederationConfig, Protocol, RejectReason, SiteAction, SiteEvent,
    memory,
};
use tessera_secagg::{Phase, SiteId};

mod common;

use common::*;

fn weighted(sites: &[u32]) -> f32 {
    let w: u64 = sites.iter().map(|&i| weight(i)).sum();
    sites
        .iter()
        .map(|&i| step(i) * weight(i) as f32)
        .sum::<f32>()
        / w as f32
}

fn ids(sites: &[u32]) -> Vec<SiteId> {
    sites.iter().map(|&i| SiteId(i)).collect()
}

/// Two of five sites withdraw at each phase in turn; no round waits for a deadline.
#[test]
fn dropouts_at_every_phase_need_no_deadline() {
    let phases = [
        Phase::AdvertiseKeys,
        Phase::ShareKeys,
        Phase::MaskedInput,
        Phase::ConsistencyCheck,
        Phase::Unmasking,
    ];
    let mut dropouts = memory::Dropouts::new();
    for (r, phase) in phases.iter().enumerate() {
        for site in [1, 3] {
            dropouts
                .entry(SiteId(site))
                .or_default()
                .insert(r as u64 + 1, *phase);
        }
    }
    let mut h = Harness::new(config(), 5, &dropouts, None);
    let mut expected = 0.0;
    for phase in phases {
        let report = h.round();
        assert!(report.completed(), "{phase}: {report:?}");
        assert_eq!(report.left, ids(&[1, 3]), "{phase}");
        let contributors = if phase <= Phase::MaskedInput {
            vec![0, 2, 4]
        } else {
            vec![0, 1, 2, 3, 4]
        };
        assert_eq!(report.contributors, ids(&contributors), "{phase}");
        expected += weighted(&contributors);
        assert!((h.mean() - expected).abs() < 1e-5, "{phase}");
    }
}

/// A site that hangs (silent, link open) holds its phase until the deadline; a stale
/// deadline does nothing; the current one closes the phase.
#[test]
fn a_hanging_site_costs_one_deadline() {
    let mut h = Harness::new(config(), 4, &memory::Dropouts::new(), None);
    h.black_holes.push(2);
    h.coordinator.start_round().unwrap();
    h.settle();
    assert!(h.reports.is_empty(), "waits for site 2");
    let training_timer = h.timer.unwrap();
    h.coordinator
        .handle(Event::Timeout(training_timer))
        .unwrap();
    h.settle();
    let phase_timer = h.timer.unwrap();
    assert_ne!(phase_timer, training_timer);
    // the old deadline again: ignored
    h.coordinator
        .handle(Event::Timeout(training_timer))
        .unwrap();
    h.settle();
    assert_eq!(h.reports.len(), 1);
    let report = &h.reports[0];
    assert_eq!(report.contributors, ids(&[0, 1, 3]));
    assert!(report.left.is_empty(), "silence is not a link close");
}

/// A link that closes mid-round drops its site at once.
#[test]
fn a_closed_link_drops_the_site_at_once() {
    let mut h = Harness::new(config(), 4, &memory::Dropouts::new(), None);
    h.black_holes.push(1);
    h.coordinator.start_round().unwrap();
    h.settle();
    assert!(h.reports.is_empty());
    h.coordinator.handle(Event::LinkClosed(SiteId(1))).unwrap();
    h.settle();
    let report = &h.reports[0];
    assert!(report.completed());
    assert_eq!(report.contributors, ids(&[0, 2, 3]));
    assert_eq!(report.left, ids(&[1]));
    // a closed site is not selected again until it reconnects
    assert!(!h.coordinator.connected().contains(&SiteId(1)));
    h.black_holes.clear();
    assert_eq!(h.round().participants, ids(&[0, 2, 3]));
    h.coordinator.handle(Event::LinkOpened(SiteId(1))).unwrap();
    assert_eq!(h.round().participants, ids(&[0, 1, 2, 3]));
}

/// Too many withdrawals abort the round with a typed reason and leave the model alone.
#[test]
fn an_abort_is_typed_and_changes_nothing() {
    let mut dropouts = memory::Dropouts::new();
    for site in [0, 1] {
        dropouts
            .entry(SiteId(site))
            .or_default()
            .insert(1, Phase::ShareKeys);
    }
    let mut h = Harness::new(config(), 3, &dropouts, None);
    let report = h.round();
    assert!(
        matches!(report.aborted, Some(AbortCause::SecAgg(_))),
        "{report:?}"
    );
    assert!(report.contributors.is_empty());
    assert_eq!(h.mean(), 0.0);
    assert_eq!(h.coordinator.next_round(), 2);
}

/// The checkpoint written after a round resumes a new machine exactly, strategy state
/// included.
#[test]
fn resume_from_the_written_checkpoint() {
    let cfg = FederationConfig {
        strategy: Strategy::FedAvgM {
            server_lr: 1.0,
            momentum: 0.5,
        },
        ..config()
    };
    let mut h = Harness::new(cfg.clone(), 3, &memory::Dropouts::new(), None);
    h.round();
    h.round();
    let ck = h.writes[&cfg.checkpoint].clone();
    let mut resumed = Harness::new(cfg, 3, &memory::Dropouts::new(), Some(&ck));
    assert_eq!(resumed.coordinator.next_round(), 3);
    assert_eq!(resumed.coordinator.global(), h.coordinator.global());
    let a = h.round();
    let b = resumed.round();
    assert_eq!(a.contributors, b.contributors);
    assert_eq!(h.coordinator.global(), resumed.coordinator.global());
    // momentum: v1 = d, v2 = 1.5 d, v3 = 1.75 d → g = 4.25 d
    let d = weighted(&[0, 1, 2]);
    assert!((h.mean() - 4.25 * d).abs() < 1e-5, "{}", h.mean());
}

/// A round interrupted by a restart spent its number: the round marker, written before
/// the round's first message, makes the restarted coordinator start after it, though
/// the checkpoint (written when the last round ended) still names it. A marker of
/// another session, or a damaged one, is refused by path.
#[test]
fn a_restart_mid_round_resumes_after_the_spent_number() {
    let cfg = config();
    let mut h = Harness::new(cfg.clone(), 3, &memory::Dropouts::new(), None);
    h.round();
    h.log.clear();
    h.coordinator.start_round().unwrap(); // round 2: sent, never finished
    while let Some(action) = h.coordinator.poll_action() {
        match action {
            Action::Write { path, bytes } => {
                h.log.push("write");
                h.writes.insert(path, bytes);
            }
            Action::Send { .. } => h.log.push("send"),
            _ => {}
        }
    }
    assert_eq!(
        h.log.first(),
        Some(&"write"),
        "the number is spent before sending"
    );
    assert!(h.log.contains(&"send"));
    let ck = h.writes[&cfg.checkpoint].clone();
    let marker = h.writes[&cfg.round_marker_path()].clone();
    let restart = |marker: Option<&[u8]>| {
        let layout = tessera_fl::KnownUpdateTrainer::layout_for(DIM).unwrap();
        let (_, roster) = memory::identities(
            &tessera_core::seed::RootSeed::from_experiment(4),
            SESSION,
            &ids(&[0, 1, 2]),
        )
        .unwrap();
        tessera_fl::CoordinatorMachine::new(
            cfg.clone(),
            roster,
            layout,
            vec![0.0; DIM],
            Some(&ck),
            [1; 32],
        )
        .unwrap()
        .with_round_marker(marker)
    };
    assert_eq!(
        restart(None).unwrap().next_round(),
        2,
        "the checkpoint alone"
    );
    assert_eq!(restart(Some(&marker)).unwrap().next_round(), 3);
    let mut damaged = marker.clone();
    damaged[20] ^= 1;
    let err = restart(Some(&damaged)).err().unwrap().to_string();
    assert!(
        err.contains("checkpoint.round") && err.contains("integrity"),
        "{err}"
    );
    let other = tessera_fl::checkpoint::RoundMarker {
        session: [9; 16],
        next_round: 3,
    };
    let err = restart(Some(&other.encode())).err().unwrap().to_string();
    assert!(err.contains("session"), "{err}");
}

/// Sampling draws the same sites for a round whoever asks, and differs across rounds.
#[test]
fn sampling_is_reproducible_and_varies_by_round() {
    let cfg = FederationConfig {
        sample_fraction: 0.5,
        ..config()
    };
    let mut a = Harness::new(cfg.clone(), 8, &memory::Dropouts::new(), None);
    let mut b = Harness::new(cfg, 8, &memory::Dropouts::new(), None);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let ra = a.round();
        assert_eq!(ra.participants.len(), 4);
        assert_eq!(ra.participants, b.round().participants);
        seen.extend(ra.participants);
    }
    assert!(seen.len() > 4, "{seen:?}");
}

/// FedProx's μ reaches the sites' training requests.
#[test]
fn fedprox_mu_reaches_the_sites() {
    let cfg = FederationConfig {
        strategy: Strategy::FedProx { mu: 0.25 },
        ..config()
    };
    let mut h = Harness::new(cfg, 2, &memory::Dropouts::new(), None);
    h.coordinator.start_round().unwrap();
    while let Some(action) = h.coordinator.poll_action() {
        if let Action::Send { to, bytes } = action {
            h.sites[to.0 as usize].0.handle(SiteEvent::Message(&bytes));
        }
    }
    let (site, trainer) = &mut h.sites[0];
    // The site first records that it answers the round, then asks for training.
    assert!(matches!(
        site.poll_action(),
        Some(SiteAction::Answer { round: 1, .. })
    ));
    let Some(SiteAction::Train(req)) = site.poll_action() else {
        panic!("no training request");
    };
    assert_eq!(req.config.proximal_mu, 0.25);
    assert_eq!(req.global.len(), trainer.layout().len());
}

/// A message between rounds, and one from a site outside the round, are refused and
/// reported (never silently dropped).
#[test]
fn stray_messages_are_reported() {
    let cfg = FederationConfig {
        sample_fraction: 0.5,
        ..config()
    };
    let mut h = Harness::new(cfg, 4, &memory::Dropouts::new(), None);
    let junk = wire::encode(&ToCoordinator::Withdraw {
        round: 9,
        reason: WithdrawReason::Dropout,
    })
    .unwrap();
    h.coordinator
        .handle(Event::Message {
            from: SiteId(0),
            bytes: junk.clone(),
        })
        .unwrap();
    h.coordinator
        .handle(Event::Message {
            from: SiteId(1),
            bytes: vec![1, 2, 3],
        })
        .unwrap();
    h.coordinator.start_round().unwrap();
    h.settle();
    let report = h.reports[0].clone();
    let reasons: Vec<&RejectReason> = report.rejected.iter().map(|r| &r.reason).collect();
    assert!(matches!(reasons[0], RejectReason::NoRound), "{reasons:?}");
    assert!(matches!(reasons[1], RejectReason::Wire(_)), "{reasons:?}");
    let not_drawn = (0..4)
        .map(SiteId)
        .find(|s| !report.participants.contains(s))
        .unwrap();
    h.coordinator.start_round().unwrap();
    h.coordinator
        .handle(Event::Message {
            from: not_drawn,
            bytes: junk,
        })
        .unwrap();
    h.settle();
    let second = h.reports.last().unwrap();
    let expected = if second.participants.contains(&not_drawn) {
        RejectReason::WrongRound {
            got: 9,
            expected: 2,
        }
    } else {
        RejectReason::NotParticipant
    };
    assert!(
        second
            .rejected
            .iter()
            .any(|r| r.from == not_drawn && r.reason == expected),
        "{:?}",
        second.rejected
    );
}

/// The plaintext baseline: the deadline with no update aborts with `NoUpdates`.
#[test]
fn plaintext_without_updates_aborts_at_the_deadline() {
    let cfg = FederationConfig {
        protocol: Protocol::Plaintext,
        ..config()
    };
    let mut h = Harness::new(cfg, 3, &memory::Dropouts::new(), None);
    h.black_holes = vec![0, 1, 2];
    h.coordinator.start_round().unwrap();
    h.settle();
    assert!(h.reports.is_empty());
    h.coordinator
        .handle(Event::Timeout(h.timer.unwrap()))
        .unwrap();
    h.settle();
    assert_eq!(h.reports[0].aborted, Some(AbortCause::NoUpdates));
    h.black_holes.clear();
    assert!(h.round().completed());
}

/// With DP, the round's charge is written before any of its messages leaves.
#[test]
fn the_privacy_charge_is_written_before_the_round_starts() {
    let cfg = FederationConfig {
        dp: DpConfig {
            mechanism: Mechanism::Ddg,
            epsilon: 50.0,
            delta: 1e-5,
            rounds: 2,
            l2_clip: 0.1,
            ..Default::default()
        },
        ..config()
    };
    let mut h = Harness::new(cfg, 3, &memory::Dropouts::new(), None);
    let report = h.round();
    assert!(report.privacy.is_some());
    let first_send = h.log.iter().position(|a| *a == "send").unwrap();
    let first_write = h.log.iter().position(|a| *a == "write").unwrap();
    assert!(first_write < first_send, "{:?}", h.log);
}

/// The machine marks where each phase starts (drivers time them): five for secure
/// aggregation, one for the plaintext baseline.
#[test]
fn phase_starts_are_marked() {
    for (protocol, phases) in [(Protocol::Secagg, 5), (Protocol::Plaintext, 1)] {
        let cfg = FederationConfig {
            protocol,
            ..config()
        };
        let mut h = Harness::new(cfg, 3, &memory::Dropouts::new(), None);
        h.round();
        assert_eq!(h.log.iter().filter(|a| **a == "phase").count(), phases);
    }
}

/// Uniform weighting: the global model moves by the plain mean of the sites' steps,
/// whatever their sample counts, and every site sends weight 1.
#[test]
fn uniform_weighting_gives_every_site_one_vote() {
    let cfg = FederationConfig {
        weighting: tessera_fl::Weighting::Uniform,
        ..config()
    };
    let mut h = Harness::new(cfg, 3, &memory::Dropouts::new(), None);
    let report = h.round();
    assert!(report.completed(), "{report:?}");
    assert_eq!(report.total_weight, 3);
    let plain = (step(0) + step(1) + step(2)) / 3.0;
    assert!((h.mean() - plain).abs() < 1e-5, "{} vs {plain}", h.mean());
    // By samples, the same sites give the weighted mean (a different number).
    let mut by_samples = Harness::new(config(), 3, &memory::Dropouts::new(), None);
    by_samples.round();
    assert!((by_samples.mean() - weighted(&[0, 1, 2])).abs() < 1e-5);
    assert!((by_samples.mean() - plain).abs() > 1e-4);
}

/// Receipts of transcript heads: one per site per ended round, never for a transcript
/// that shrank since the last receipt (which would roll its anchor back).
#[test]
fn transcript_heads_are_signed_once_per_round_and_never_backwards() {
    use std::sync::Arc;
    use tessera_fl::wire::ToSite;
    use tessera_net::receipt::ReceiptSigner;
    let dir = std::env::temp_dir().join(format!("tessera-heads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tessera_fl::loopback::pki_for(&dir, 2).unwrap();
    let signer = Arc::new(ReceiptSigner::load(&dir.join("pki/coordinator.key")).unwrap());
    let mut h = Harness::new(config(), 2, &memory::Dropouts::new(), None);
    h.coordinator
        .enable_receipts(signer, dir.join("receipts.json"), None)
        .unwrap();
    let head = |h: &mut Harness, site: u32, seq: u64| -> bool {
        let bytes = wire::encode(&ToCoordinator::Head {
            session: SESSION,
            seq,
            head: "ab".repeat(32),
        })
        .unwrap();
        h.coordinator
            .handle(Event::Message {
                from: SiteId(site),
                bytes,
            })
            .unwrap();
        let mut receipted = false;
        while let Some(action) = h.coordinator.poll_action() {
            if let Action::Send { to, bytes } = action
                && to == SiteId(site)
                && matches!(wire::decode::<ToSite>(&bytes), Ok(ToSite::Receipt(_)))
            {
                receipted = true;
            }
        }
        receipted
    };
    assert!(!head(&mut h, 0, 5), "no round has ended");
    assert!(h.round().completed());
    assert!(head(&mut h, 0, 5));
    assert!(!head(&mut h, 0, 6), "a second head for the same round");
    assert!(h.round().completed());
    assert!(!head(&mut h, 0, 3), "a transcript that shrank");
    assert!(head(&mut h, 1, 9));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Heads taken in together (the driver drains what has arrived before acting) give one
/// write of the receipts file, holding every receipt, before any of them is sent; heads
/// taken in one at a time give a write before each send.
#[test]
fn receipts_taken_together_are_written_once_before_any_is_sent() {
    use std::sync::Arc;
    use tessera_fl::wire::ToSite;
    use tessera_net::receipt::ReceiptSigner;
    let dir = std::env::temp_dir().join(format!("tessera-heads-once-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tessera_fl::loopback::pki_for(&dir, 3).unwrap();
    let signer = Arc::new(ReceiptSigner::load(&dir.join("pki/coordinator.key")).unwrap());
    let mut h = Harness::new(config(), 3, &memory::Dropouts::new(), None);
    let path = dir.join("receipts.json");
    h.coordinator
        .enable_receipts(signer, path.clone(), None)
        .unwrap();
    let give_head = |h: &mut Harness, site: u32, seq: u64| {
        let head = ToCoordinator::Head {
            session: SESSION,
            seq,
            head: "cd".repeat(32),
        };
        let bytes = wire::encode(&head).unwrap();
        let from = SiteId(site);
        h.coordinator
            .handle(Event::Message { from, bytes })
            .unwrap();
    };
    // What the driver would do, in order: writes (whose receipts) and receipt sends.
    let carry_out = |h: &mut Harness| {
        let mut done = Vec::new();
        while let Some(action) = h.coordinator.poll_action() {
            match action {
                Action::Write { path: p, bytes } if p == path => {
                    let latest: std::collections::BTreeMap<u32, serde_json::Value> =
                        serde_json::from_slice(&bytes).unwrap();
                    done.push(format!("write {:?}", latest.keys().collect::<Vec<_>>()));
                }
                Action::Send { to, bytes } => {
                    if let Ok(ToSite::Receipt(_)) = wire::decode::<ToSite>(&bytes) {
                        done.push(format!("send {}", to.0));
                    }
                }
                _ => {}
            }
        }
        done
    };
    assert!(h.round().completed());
    for site in 0..3 {
        give_head(&mut h, site, 5);
    }
    assert_eq!(
        carry_out(&mut h),
        ["write [0, 1, 2]", "send 0", "send 1", "send 2"]
    );
    assert!(h.round().completed());
    give_head(&mut h, 0, 9);
    assert_eq!(carry_out(&mut h), ["write [0, 1, 2]", "send 0"]);
    give_head(&mut h, 2, 9);
    assert_eq!(carry_out(&mut h), ["write [0, 1, 2]", "send 2"]);
    let _ = std::fs::remove_dir_all(&dir);
}
