//! Whole rounds: the unmasked sum is exact under dropouts at every phase (SecAgg and
//! SecAgg+), rounds beyond the dropout tolerance abort without revealing any input, and
//! the fixed-point weighted mean is within its quantisation bound.

use chacha20::ChaCha20Rng;
use proptest::prelude::*;
use rand_core::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use tessera_secagg::simulation::{
    DropSchedule, RoundOutcome, SimulatedSite, run_round, test_identities,
};
use tessera_secagg::{
    AbortReason, Body, FixedPoint, GraphSpec, MaskPrg, Modulus, Phase, PlainVector, Round,
    RoundConfig, RoundParams, SessionId, SiteId, Status,
};

const PHASES: [Phase; 5] = [
    Phase::AdvertiseKeys,
    Phase::ShareKeys,
    Phase::MaskedInput,
    Phase::ConsistencyCheck,
    Phase::Unmasking,
];

struct Setup {
    config: Arc<RoundConfig>,
    inputs: BTreeMap<SiteId, PlainVector>,
}

fn setup(n: u32, t: u32, m: u32, bits: u8, graph: GraphSpec, seed: u64) -> Setup {
    let modulus = Modulus::new(bits).unwrap();
    let participants: Vec<SiteId> = (0..n).map(|i| SiteId(i * 2 + 1)).collect();
    let config = RoundConfig::new(RoundParams {
        session: SessionId([7; 16]),
        round: Round(seed),
        participants: participants.clone(),
        vector_len: m,
        modulus,
        threshold: t,
        graph,
        context: [0; 32],
        // Odd seeds expand masks with ChaCha20, even ones with AES-256-CTR, so the
        // property tests cover both generators.
        mask_prg: if seed % 2 == 1 {
            MaskPrg::ChaCha20
        } else {
            MaskPrg::Aes256Ctr
        },
    })
    .unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let inputs = participants
        .iter()
        .map(|id| {
            (
                *id,
                PlainVector::new(modulus, (0..m).map(|_| rng.next_u32()).collect()),
            )
        })
        .collect();
    Setup { config, inputs }
}

fn run(setup: &Setup, drops: &DropSchedule, seed: u64) -> RoundOutcome {
    let ids: Vec<SiteId> = setup.inputs.keys().copied().collect();
    let (identities, roster) = test_identities(&ids, [seed as u8; 32]);
    let sites = ids
        .iter()
        .zip(identities)
        .map(|(id, identity)| SimulatedSite {
            id: *id,
            identity,
            input: setup.inputs[id].clone(),
        })
        .collect();
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    run_round(&setup.config, &roster, sites, drops, s, true).unwrap()
}

/// Sites that sent their masked input: those not silent by the masked-input phase.
fn expected_contributors(setup: &Setup, drops: &DropSchedule) -> Vec<SiteId> {
    setup
        .inputs
        .keys()
        .copied()
        .filter(|id| drops.get(id).is_none_or(|p| *p > Phase::MaskedInput))
        .collect()
}

/// No owner ever had shares of both its secrets revealed to the aggregator, and each
/// kind of share only reaches the aggregator when the round's state allows it.
fn assert_no_double_reveal(outcome: &RoundOutcome) {
    let mut kinds: BTreeMap<SiteId, (usize, usize)> = BTreeMap::new();
    for (_, env) in &outcome.received {
        if let Body::UnmaskShares(s) = &env.body {
            for r in &s.self_mask {
                kinds.entry(r.owner).or_default().0 += 1;
            }
            for r in &s.mask_key {
                kinds.entry(r.owner).or_default().1 += 1;
            }
        }
    }
    for (owner, (b, s)) in kinds {
        assert!(
            b == 0 || s == 0,
            "{owner}: {b} self-mask and {s} mask-key shares revealed"
        );
    }
}

fn check_exact(setup: &Setup, drops: &DropSchedule, outcome: &RoundOutcome) {
    assert!(outcome.site_errors.is_empty(), "{:?}", outcome.site_errors);
    assert!(
        outcome.aggregator_errors.is_empty(),
        "{:?}",
        outcome.aggregator_errors
    );
    assert_eq!(outcome.status, Status::Finished, "drops {drops:?}");
    let result = outcome.result.as_ref().unwrap();
    let contributors = expected_contributors(setup, drops);
    assert_eq!(result.contributors, contributors);
    let modulus = setup.config.modulus();
    let mut expected = PlainVector::zeros(modulus, setup.config.vector_len());
    for id in &contributors {
        expected.add_assign(&setup.inputs[id]);
    }
    assert_eq!(result.sum, expected);
    assert_no_double_reveal(outcome);
}

/// Up to `budget` sites, each silent from a random phase.
fn random_drops(ids: &[SiteId], budget: usize, rng: &mut ChaCha20Rng) -> DropSchedule {
    let count = (rng.next_u32() as usize) % (budget + 1);
    let mut pool = ids.to_vec();
    let mut drops = DropSchedule::new();
    for _ in 0..count {
        let i = rng.next_u32() as usize % pool.len();
        let id = pool.swap_remove(i);
        drops.insert(id, PHASES[rng.next_u32() as usize % PHASES.len()]);
    }
    drops
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn secagg_sum_is_exact_with_up_to_n_minus_t_dropouts(
        n in 2u32..=64, t_frac in 0.0f64..1.0, m in 1u32..=40, bits in 8u8..=32, seed in any::<u64>()
    ) {
        let t_min = n / 2 + 1;
        let t = t_min + ((f64::from(n - t_min)) * t_frac).round() as u32;
        let setup = setup(n, t, m, bits, GraphSpec::Complete, seed);
        let ids: Vec<SiteId> = setup.inputs.keys().copied().collect();
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xd0);
        let drops = random_drops(&ids, (n - t) as usize, &mut rng);
        let outcome = run(&setup, &drops, seed);
        check_exact(&setup, &drops, &outcome);
    }

    #[test]
    fn secagg_plus_sum_is_exact_with_dropouts_within_each_neighbourhood(
        n in 6u32..=64, k_frac in 0.0f64..1.0, t_frac in 0.0f64..1.0, m in 1u32..=40, bits in 8u8..=32,
        seed in any::<u64>()
    ) {
        // degree 2..n−2 with n·k even
        let mut k = 2 + ((f64::from(n - 4)) * k_frac) as u32;
        if (n * k) % 2 == 1 { k -= 1; }
        let holders = k + 1;
        let t_min = holders / 2 + 1;
        let t = t_min + ((f64::from(holders - t_min)) * t_frac).round() as u32;
        let setup = setup(n, t, m, bits, GraphSpec::RandomRegular { degree: k, seed: [seed as u8; 32] }, seed);
        let ids: Vec<SiteId> = setup.inputs.keys().copied().collect();
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xd1);
        // At most holders − t drops anywhere keeps every neighbourhood at ≥ t.
        let drops = random_drops(&ids, (holders - t) as usize, &mut rng);
        let outcome = run(&setup, &drops, seed);
        check_exact(&setup, &drops, &outcome);
    }

    #[test]
    fn weighted_mean_is_within_the_quantisation_bound(
        n in 2u32..=20, dim in 1usize..=30, bits in 16u8..=32, clip in 0.1f32..10.0, seed in any::<u64>()
    ) {
        let modulus = Modulus::new(bits).unwrap();
        let max_weight = 2000;
        let scale = FixedPoint::max_scale(modulus, clip, n as usize);
        let fp = FixedPoint::new(modulus, clip, scale, n as usize, max_weight, dim).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut updates = Vec::new();
        let mut weights = Vec::new();
        for _ in 0..n {
            let u: Vec<f32> = (0..dim).map(|_| (rng.next_u32() as f32 / u32::MAX as f32 * 2.0 - 1.0) * clip * 1.2).collect();
            updates.push(u);
            weights.push(1 + u64::from(rng.next_u32()) % max_weight);
        }
        let t = n / 2 + 1;
        let mut s = setup(n, t, fp.encoded_len() as u32, bits, GraphSpec::Complete, seed);
        for (i, input) in s.inputs.values_mut().enumerate() {
            *input = fp.encode(&updates[i], weights[i], &mut rng).unwrap();
        }
        let outcome = run(&s, &DropSchedule::new(), seed);
        check_exact(&s, &DropSchedule::new(), &outcome);
        let mean = fp.decode(&outcome.result.unwrap().sum).unwrap();
        let total: u64 = weights.iter().sum();
        prop_assert_eq!(mean.total_weight, total);
        let bound = fp.mean_error_bound(n as usize, total);
        for j in 0..dim {
            let exact: f64 = updates.iter().zip(&weights)
                .map(|(u, w)| f64::from(u[j].clamp(-clip, clip)) * *w as f64).sum::<f64>() / total as f64;
            let err = (f64::from(mean.mean[j]) - exact).abs();
            prop_assert!(err <= bound + 1e-6 * f64::from(clip), "coordinate {}: error {} > bound {}", j, err, bound);
        }
    }
}

#[test]
fn more_than_n_minus_t_dropouts_abort_at_every_phase_without_revealing_inputs() {
    for phase in PHASES {
        let setup = setup(9, 6, 16, 16, GraphSpec::Complete, 5);
        let ids: Vec<SiteId> = setup.inputs.keys().copied().collect();
        // n − t + 1 = 4 sites fall silent at `phase`.
        let drops: DropSchedule = ids[..4].iter().map(|id| (*id, phase)).collect();
        let outcome = run(&setup, &drops, 5);
        match &outcome.status {
            Status::Aborted(AbortReason::TooFewSurvivors {
                survivors: 5,
                threshold: 6,
                ..
            }) => {}
            Status::Aborted(AbortReason::TooFewHolders {
                have: 5, need: 6, ..
            }) => {}
            other => panic!("phase {phase}: expected an abort, got {other:?}"),
        }
        assert!(outcome.result.is_none());
        let reason = match &outcome.status {
            Status::Aborted(r) => r.to_string(),
            _ => unreachable!(),
        };
        assert!(reason.contains('6'), "{reason}");
        // Nothing revealed lets the aggregator strip an individual's self-mask: it holds
        // fewer than t self-mask shares of every site.
        let mut self_mask: BTreeMap<SiteId, usize> = BTreeMap::new();
        for (_, env) in &outcome.received {
            if let Body::UnmaskShares(s) = &env.body {
                for r in &s.self_mask {
                    *self_mask.entry(r.owner).or_default() += 1;
                }
            }
        }
        assert!(
            self_mask.values().all(|&c| c < 6),
            "phase {phase}: {self_mask:?}"
        );
        assert_no_double_reveal(&outcome);
    }
}

#[test]
fn secagg_plus_aborts_when_a_neighbourhood_loses_too_many_holders() {
    let setup = setup(
        30,
        4,
        8,
        16,
        GraphSpec::RandomRegular {
            degree: 4,
            seed: [3; 32],
        },
        9,
    );
    let victim = SiteId(1);
    let neighbours = setup.config.graph().neighbours(victim);
    // Two of its four neighbours stop before the masked input: only 3 < 4 holders of the
    // victim's self-mask remain, so its mask cannot be removed and the round aborts.
    let drops: DropSchedule = neighbours[..2]
        .iter()
        .map(|id| (*id, Phase::MaskedInput))
        .collect();
    let outcome = run(&setup, &drops, 9);
    assert!(
        matches!(
            outcome.status,
            Status::Aborted(AbortReason::TooFewHolders { .. })
        ),
        "{:?}",
        outcome.status
    );
    assert_no_double_reveal(&outcome);
}

#[test]
fn a_masked_vector_is_uniform_even_for_an_all_zero_input() {
    // χ² with 255 degrees of freedom: the 0.1% critical value is 330.5.
    const CRITICAL: f64 = 330.5;
    let m = 256 * 80;
    let mut s = setup(3, 2, m, 8, GraphSpec::Complete, 77);
    for v in s.inputs.values_mut() {
        *v = PlainVector::zeros(Modulus::new(8).unwrap(), m as usize);
    }
    let outcome = run(&s, &DropSchedule::new(), 77);
    let chi_square = |words: &[u32]| {
        let mut counts = [0f64; 256];
        for w in words {
            counts[*w as usize] += 1.0;
        }
        let expected = words.len() as f64 / 256.0;
        counts
            .iter()
            .map(|c| (c - expected).powi(2) / expected)
            .sum::<f64>()
    };
    let masked: Vec<&[u32]> = outcome
        .received
        .iter()
        .filter_map(|(_, env)| match &env.body {
            Body::MaskedInput(upload) => Some(upload.vector.as_slice()),
            _ => None,
        })
        .collect();
    assert_eq!(masked.len(), 3);
    for words in masked {
        let x2 = chi_square(words);
        assert!(x2 < CRITICAL, "masked vector fails uniformity: χ² = {x2}");
    }
    // The test has power: the unmasked (all-zero) input fails it by far.
    assert!(chi_square(s.inputs.values().next().unwrap().as_slice()) > 1e6);
    assert_eq!(
        outcome.result.unwrap().sum,
        PlainVector::zeros(Modulus::new(8).unwrap(), m as usize)
    );
}
