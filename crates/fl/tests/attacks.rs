//! A malicious coordinator against sites under the default (deployment) policy. Each
//! test is an attack that would expose one site's update if the site obeyed; it
//! passes only because the site refuses. With `SitePolicy::permissive()` (or without
//! the context digest) each of these tests fails.

mod common;

use common::*;
use tessera_dp::{CodecSpec, FixedPointSpec};
use tessera_fl::wire::{self, ToSite};
use tessera_fl::{AbortCause, Event, FederationConfig, Protocol, SitePolicy, memory};
use tessera_secagg::{GraphSpec, SiteId};

fn strict(cfg: FederationConfig, n: u32) -> Harness {
    Harness::with_policy(
        cfg,
        n,
        &memory::Dropouts::new(),
        None,
        SitePolicy::default(),
    )
}

/// Rewrites the round start sent to the sites `to`.
fn rewrite(to: Vec<SiteId>, mut change: impl FnMut(&mut wire::RoundStart) + 'static) -> Tamper {
    Box::new(move |site, bytes| match wire::decode::<ToSite>(bytes) {
        Ok(ToSite::RoundStart(mut start)) if to.contains(&site) => {
            change(&mut start);
            wire::encode(&ToSite::RoundStart(start)).unwrap()
        }
        _ => bytes.to_vec(),
    })
}

fn keys(h: &Harness) -> Vec<&'static str> {
    h.refusals.iter().map(|(_, r)| r.key).collect()
}

/// The coordinator asks for updates in the clear: every site refuses and nothing
/// leaves any of them.
#[test]
fn attack_downgrade_refused() {
    let cfg = FederationConfig {
        protocol: Protocol::Plaintext,
        ..config()
    };
    let mut h = strict(cfg, 3);
    h.coordinator.start_round().unwrap();
    h.settle();
    assert_eq!(keys(&h), vec!["require_secure"; 3]);
    assert!(h.sent.is_empty(), "{:?}", h.sent);
    h.coordinator
        .handle(Event::Timeout(h.timer.unwrap()))
        .unwrap();
    h.settle();
    assert_eq!(h.reports[0].aborted, Some(AbortCause::NoUpdates));
}

/// Split views: every site but the victim is told to clip its update to nothing, so
/// that the sum would be the victim's update alone. The others see that the context in
/// the parameters is not what they received and refuse; the victim's masked input never
/// leaves it and the round aborts.
#[test]
fn attack_split_views_abort_with_nothing_learned() {
    let mut h = strict(config(), 4);
    h.tamper = Some(rewrite(vec![SiteId(1), SiteId(2), SiteId(3)], |start| {
        if let CodecSpec::FixedPoint(FixedPointSpec { clip, .. }) = &mut start.codec {
            *clip = 1e-30;
        }
    }));
    h.coordinator.start_round().unwrap();
    h.settle();
    assert_eq!(keys(&h), vec!["context"; 3]);
    h.coordinator
        .handle(Event::Timeout(h.timer.unwrap()))
        .unwrap();
    h.settle();
    assert!(matches!(h.reports[0].aborted, Some(AbortCause::SecAgg(_))));
    assert!(
        !h.sent.iter().any(|(_, kind)| *kind == "masked-input"),
        "{:?}",
        h.sent
    );
}

/// The same, with the context digest recomputed for the altered view: the others now
/// accept, but they sign other round parameters than the victim, so no advertisement
/// verifies across the two views and the victim's masked input never leaves it.
#[test]
fn attack_split_views_with_recomputed_context_abort() {
    let mut h = strict(config(), 4);
    h.tamper = Some(rewrite(vec![SiteId(1), SiteId(2), SiteId(3)], |start| {
        if let CodecSpec::FixedPoint(FixedPointSpec { clip, .. }) = &mut start.codec {
            *clip = 1e-30;
        }
        start.params.context = wire::context_digest(
            &start.codec,
            &start.training,
            &start.strategy,
            start.secure,
            &start.global,
        )
        .unwrap();
    }));
    h.coordinator.start_round().unwrap();
    h.settle();
    if h.reports.is_empty() {
        h.coordinator
            .handle(Event::Timeout(h.timer.unwrap()))
            .unwrap();
        h.settle();
    }
    let victim_masked = h
        .sent
        .iter()
        .any(|(site, kind)| *site == SiteId(0) && *kind == "masked-input");
    assert!(!victim_masked, "{:?}", h.sent);
    assert!(
        h.reports
            .iter()
            .all(|r| !r.contributors.contains(&SiteId(0)))
    );
}

/// Two sites (one of them the coordinator's accomplice) are too few to hide anyone.
#[test]
fn attack_tiny_cohort_refused() {
    let mut h = strict(config(), 2);
    h.coordinator.start_round().unwrap();
    h.settle();
    assert_eq!(keys(&h), vec!["min_sites"; 2]);
    assert!(h.sent.is_empty());
    // A threshold that one colluder and the coordinator could meet is refused too.
    let policy = SitePolicy {
        max_corrupt: 1,
        ..SitePolicy::default()
    };
    let mut h = Harness::with_policy(config(), 3, &memory::Dropouts::new(), None, policy);
    h.coordinator.start_round().unwrap();
    h.settle();
    assert_eq!(keys(&h), vec!["max_corrupt"; 3]);
}

/// A SecAgg+ graph drawn from a seed of the coordinator's choosing (to place the
/// victim among accomplices) is refused: sites derive the seed themselves.
#[test]
fn attack_foreign_graph_seed_refused() {
    let cfg = FederationConfig {
        protocol: Protocol::SecaggPlus,
        ..config()
    };
    // Enough sites for a sparse graph (with few, SecAgg+ plans the complete one).
    let n = 60;
    let mut h = strict(cfg, n);
    h.tamper = Some(rewrite(
        (0..n).map(SiteId).collect(),
        |start| match &mut start.params.graph {
            GraphSpec::RandomRegular { seed, .. } => seed[0] ^= 1,
            GraphSpec::Complete => panic!("the planner chose the complete graph"),
        },
    ));
    h.coordinator.start_round().unwrap();
    h.settle();
    assert_eq!(keys(&h), vec!["graph_seed"; n as usize]);
    assert!(h.sent.is_empty());
}

/// A coordinator that runs a round number again (to difference two sums over different
/// sets) is refused: each site answers a round at most once.
#[test]
fn attack_repeated_round_refused() {
    let mut h = strict(config(), 3);
    assert!(h.round().completed());
    // The coordinator "forgets" (or rolls back) and starts round 1 again.
    let ids: Vec<SiteId> = (0..3).map(SiteId).collect();
    let (_, roster) = memory::identities(
        &tessera_core::seed::RootSeed::from_experiment(4),
        SESSION,
        &ids,
    )
    .unwrap();
    h.coordinator = tessera_fl::CoordinatorMachine::new(
        config(),
        roster,
        tessera_fl::KnownUpdateTrainer::layout_for(DIM).unwrap(),
        vec![0.0; DIM],
        None,
        [1; 32],
    )
    .unwrap();
    for i in 0..3 {
        h.coordinator.handle(Event::LinkOpened(SiteId(i))).unwrap();
    }
    let before = h.sent.len();
    h.coordinator.start_round().unwrap();
    h.settle();
    assert_eq!(keys(&h), vec!["round"; 3]);
    assert_eq!(h.sent.len(), before, "nothing sent for the repeated round");
}

/// The policy refuses contradictions, naming the key.
#[test]
fn contradictory_policies_are_refused() {
    let bad = |p: SitePolicy| match p.validate() {
        Err(tessera_fl::FlError::Config { key, .. }) => key,
        other => panic!("{other:?}"),
    };
    assert!(SitePolicy::default().validate().is_ok());
    assert!(SitePolicy::permissive().validate().is_ok());
    let mut p = SitePolicy::default();
    p.protocols.push(Protocol::Plaintext);
    assert_eq!(bad(p), "policy.protocols");
    let p = SitePolicy {
        max_corrupt: 2,
        min_sites: 3,
        ..SitePolicy::default()
    };
    assert_eq!(bad(p), "policy.max_corrupt");
    let p = SitePolicy {
        strategies: vec!["fedsgd".into()],
        ..SitePolicy::default()
    };
    assert_eq!(bad(p), "policy.strategies");
    let p = SitePolicy {
        min_noise_per_clip: 1.0,
        ..SitePolicy::default()
    };
    assert_eq!(bad(p), "policy.min_noise_per_clip");
    let p = SitePolicy {
        require_mechanism: Some(tessera_dp::Mechanism::Central),
        ..SitePolicy::default()
    };
    assert_eq!(bad(p), "policy.require_mechanism");
}

/// A site that stops reading (malicious or stuck) fills its bounded queue and is
/// dropped; the coordinator never waits on it, and every round completes with the
/// others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_stalled_site_does_not_block_the_others() {
    use std::time::Duration;
    use tessera_fl::{KnownUpdateTrainer, LinkEvent};
    let dir = std::env::temp_dir().join(format!("tessera-stalled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = FederationConfig {
        training_timeout: Duration::from_millis(150),
        phase_timeout: Duration::from_millis(150),
        checkpoint: dir.join("checkpoint.bin"),
        ..config()
    };
    let trainers = (0..4)
        .map(|i| KnownUpdateTrainer::new(DIM, step(i), weight(i)).unwrap())
        .collect();
    let layout = KnownUpdateTrainer::layout_for(DIM).unwrap();
    let root = tessera_core::seed::RootSeed::from_experiment(4);
    let mut fed = memory::start(
        cfg,
        layout,
        vec![0.0; DIM],
        trainers,
        &memory::Dropouts::new(),
        &dir,
        root,
    )
    .await
    .unwrap();
    // Site 3's link is replaced by one whose other end is never read.
    let (to_site, _never_read) = tokio::sync::mpsc::channel(tessera_fl::links::SITE_QUEUE);
    fed.links
        .send(LinkEvent::Opened {
            site: SiteId(3),
            link: 99,
            to_site,
        })
        .await
        .unwrap();
    let mut dropped_after = None;
    for r in 1..=45u64 {
        let report = tokio::time::timeout(Duration::from_secs(30), fed.coordinator.run_round())
            .await
            .expect("the coordinator is not blocked")
            .unwrap();
        assert!(report.completed(), "{report:?}");
        assert!(
            report
                .contributors
                .starts_with(&[SiteId(0), SiteId(1), SiteId(2)])
        );
        if dropped_after.is_none() && !fed.coordinator.machine().connected().contains(&SiteId(3)) {
            dropped_after = Some(r);
        }
    }
    assert!(
        dropped_after.is_some(),
        "the stalled site was never dropped"
    );
    fed.coordinator.shutdown().await.unwrap();
}

/// With fresh randomness (a deployment), a site's round secrets do not follow from any
/// long-lived seed: two sites with the same root answer the same round with different
/// keys and rounding, where simulated sites (deterministic by design) answer alike.
#[test]
fn fresh_randomness_gives_each_round_new_secrets() {
    let first_message = |fresh: bool| {
        let h = Harness::new(config(), 3, &memory::Dropouts::new(), None);
        let mut h = if fresh { h.fresh_randomness() } else { h };
        h.round();
        h.messages
            .iter()
            .find(|(site, _)| *site == SiteId(0))
            .map(|(_, bytes)| bytes.clone())
            .unwrap()
    };
    assert_eq!(first_message(false), first_message(false));
    assert_ne!(first_message(true), first_message(true));
}

/// A coordinator that asks a DP site for less noise than its policy's floor (or none at
/// all) is refused.
#[test]
fn attack_weaker_noise_refused() {
    use tessera_dp::{DpConfig, Mechanism};
    let dp = |epsilon: f64| FederationConfig {
        dp: DpConfig {
            mechanism: Mechanism::Ddg,
            epsilon,
            delta: 1e-5,
            rounds: 3,
            l2_clip: 1.0,
            ..Default::default()
        },
        ..config()
    };
    let policy = SitePolicy {
        require_mechanism: Some(Mechanism::Ddg),
        min_noise_per_clip: 0.5,
        ..SitePolicy::default()
    };
    // Enough noise (ε = 3 over 3 rounds): the round goes ahead.
    let mut h = Harness::with_policy(dp(3.0), 4, &memory::Dropouts::new(), None, policy.clone());
    assert!(h.round().completed());
    assert!(h.refusals.is_empty(), "{:?}", h.refusals);
    // Far less (ε = 1000): refused.
    let mut h = Harness::with_policy(
        dp(1000.0),
        4,
        &memory::Dropouts::new(),
        None,
        policy.clone(),
    );
    h.coordinator.start_round().unwrap();
    h.settle();
    assert_eq!(keys(&h), vec!["min_noise_per_clip"; 4]);
    // No DP at all: refused.
    let mut h = Harness::with_policy(config(), 4, &memory::Dropouts::new(), None, policy);
    h.coordinator.start_round().unwrap();
    h.settle();
    assert_eq!(keys(&h), vec!["require_mechanism"; 4]);
}

/// A coordinator that switches a DP site to the patient unit (each patient clipped, so
/// the site's whole update is as many clips large as it sampled patients) is refused by
/// a site whose policy protects the site; a site that chose the patient unit takes part.
#[test]
fn attack_patient_unit_refused_by_a_site_that_protects_itself() {
    use tessera_dp::{DpConfig, Mechanism, PrivacyUnit};
    let cfg = FederationConfig {
        dp: DpConfig {
            mechanism: Mechanism::Ddg,
            epsilon: 8.0,
            delta: 1e-5,
            rounds: 3,
            l2_clip: 1.0,
            unit: PrivacyUnit::Patient,
            sampling_rate: 0.5,
            patients: 40,
        },
        ..config()
    };
    let policy = |unit| SitePolicy {
        require_mechanism: Some(Mechanism::Ddg),
        unit,
        ..SitePolicy::default()
    };
    let mut h = Harness::with_policy(
        cfg.clone(),
        4,
        &memory::Dropouts::new(),
        None,
        policy(PrivacyUnit::Site),
    );
    h.coordinator.start_round().unwrap();
    h.settle();
    assert_eq!(keys(&h), vec!["unit"; 4]);
    let mut h = Harness::with_policy(
        cfg,
        4,
        &memory::Dropouts::new(),
        None,
        policy(PrivacyUnit::Patient),
    );
    h.coordinator.start_round().unwrap();
    h.settle();
    assert!(h.refusals.is_empty(), "{:?}", h.refusals);
}

/// A site keeps its own privacy ledger: it accounts every round it answers exactly as
/// the coordinator plans it (with no colluders assumed), and refuses the round that
/// would take its ε past its own budget, whatever the coordinator's budget says.
#[test]
fn a_site_refuses_rounds_past_its_own_budget() {
    use tessera_dp::{DpConfig, Mechanism};
    let cfg = FederationConfig {
        dp: DpConfig {
            mechanism: Mechanism::Ddg,
            epsilon: 50.0,
            delta: 1e-5,
            rounds: 3,
            l2_clip: 1.0,
            ..Default::default()
        },
        ..config()
    };
    let policy = |max: f64| SitePolicy {
        require_mechanism: Some(Mechanism::Ddg),
        max_epsilon: Some(max),
        ..SitePolicy::default()
    };
    // With a budget the coordinator's plan fits in, the site's ε tracks the coordinator's.
    let mut h = Harness::with_policy(cfg.clone(), 4, &memory::Dropouts::new(), None, policy(1e6));
    h.round();
    h.round();
    let site = h.sites[0].0.ledger().unwrap().clone();
    let coordinator = h.coordinator.ledger().unwrap().clone();
    assert_eq!(site.entries.len(), 2);
    for (s, c) in site.entries.iter().zip(&coordinator.entries) {
        assert!(
            (s.rho - c.rho).abs() <= 1e-9 * c.rho,
            "{} vs {}",
            s.rho,
            c.rho
        );
    }
    let (e1, e2) = (
        site.entries[0].cumulative_epsilon,
        site.entries[1].cumulative_epsilon,
    );
    // A site whose budget lies between: the first round, then a refusal.
    let mut h = Harness::with_policy(
        cfg,
        4,
        &memory::Dropouts::new(),
        None,
        policy((e1 + e2) / 2.0),
    );
    assert!(h.round().completed());
    h.coordinator.start_round().unwrap();
    h.settle();
    assert_eq!(keys(&h), vec!["max_epsilon"; 4]);
    assert_eq!(
        h.sites[0].0.ledger().unwrap().entries.len(),
        1,
        "a refused round is not charged"
    );
}

/// A site's spent budget survives a restart whatever its policy now says: a saved
/// ledger is refused when the policy keeps no ledger, or one with another mechanism or
/// δ; a changed budget applies against everything already spent.
#[test]
fn attack_ledger_reset_by_a_weaker_policy_refused() {
    use tessera_dp::{DpConfig, Mechanism};
    let cfg = FederationConfig {
        dp: DpConfig {
            mechanism: Mechanism::Ddg,
            epsilon: 50.0,
            delta: 1e-5,
            rounds: 3,
            l2_clip: 1.0,
            ..Default::default()
        },
        ..config()
    };
    let policy = |m: Mechanism, max: Option<f64>, delta: f64| SitePolicy {
        require_mechanism: Some(m),
        max_epsilon: max,
        delta,
        ..SitePolicy::default()
    };
    let mut h = Harness::with_policy(
        cfg.clone(),
        4,
        &memory::Dropouts::new(),
        None,
        policy(Mechanism::Ddg, Some(1e6), 1e-5),
    );
    assert!(h.round().completed());
    let saved = h.sites[0].0.ledger().unwrap().clone();
    assert!(saved.spent() > 0.0);
    let machine = |p: SitePolicy| {
        Harness::with_policy(cfg.clone(), 4, &memory::Dropouts::new(), None, p)
            .sites
            .remove(0)
            .0
    };
    for (p, key) in [
        (policy(Mechanism::Ddg, None, 1e-5), "max_epsilon"),
        (
            policy(Mechanism::Skellam, Some(1e6), 1e-5),
            "require_mechanism",
        ),
        (policy(Mechanism::Ddg, Some(1e6), 1e-6), "delta"),
    ] {
        let refused = machine(p).with_saved_ledger(saved.clone()).err();
        assert_eq!(refused.map(|r| r.key), Some(key));
    }
    let budget = saved.spent() * 1.5;
    let resumed = machine(policy(Mechanism::Ddg, Some(budget), 1e-5))
        .with_saved_ledger(saved.clone())
        .unwrap();
    let ledger = resumed.ledger().unwrap();
    assert_eq!(ledger.entries, saved.entries);
    assert_eq!(ledger.target_epsilon, budget);
}
