//! `tessera simulate`: secure-aggregation rounds between simulated sites.

use clap::ValueEnum;
use std::time::Instant;
use tessera_secagg::plan::{PlanRequest, plan_secagg, plan_secagg_plus};
use tessera_secagg::simulation::{
    DropSchedule, SimulatedSite, run_round, site_rng, test_identities,
};
use tessera_secagg::{
    FixedPoint, GraphSpec, Modulus, Phase, PlainVector, Round, RoundConfig, RoundParams, SessionId,
    SiteId, Status,
};

#[derive(Clone, Copy, ValueEnum)]
pub enum Protocol {
    /// Complete graph (Bonawitz et al. 2017).
    Secagg,
    /// Random k-regular graph (Bell et al. 2020), degree from the planner.
    SecaggPlus,
}

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Number of sites.
    #[arg(long, default_value_t = 50)]
    sites: usize,
    /// Coordinates of each model update.
    #[arg(long, default_value_t = 100_000)]
    dim: usize,
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    /// Probability that a site drops out during a round (at a random phase).
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    /// Fraction of sites assumed corrupt (for choosing the threshold and degree).
    #[arg(long, default_value_t = 0.05)]
    corruption: f64,
    #[arg(long, value_enum, default_value_t = Protocol::SecaggPlus)]
    protocol: Protocol,
    /// Bits per coordinate of the aggregation ring (8 to 32).
    #[arg(long, default_value_t = 24)]
    bits: u8,
    /// Clipping range: coordinates are clipped to [-clip, clip] before encoding.
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: &SimulateArgs) -> Result<(), String> {
    let modulus = Modulus::new(args.bits).map_err(|e| format!("--bits: {e}"))?;
    let request = PlanRequest::new(args.sites, args.dropout, args.corruption);
    let plan = match args.protocol {
        Protocol::Secagg => plan_secagg(&request),
        Protocol::SecaggPlus => plan_secagg_plus(&request),
    }
    .map_err(|e| e.to_string())?;
    let max_weight = 1000;
    let scale = FixedPoint::max_scale(modulus, args.clip, args.sites);
    let codec = FixedPoint::new(modulus, args.clip, scale, args.sites, max_weight, args.dim)
        .map_err(|e| e.to_string())?;
    let ids: Vec<SiteId> = (0..args.sites as u32).map(SiteId).collect();
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&args.seed.to_le_bytes());
    let (identities, roster) = test_identities(&ids, seed);

    println!(
        "{} sites, {} coordinates, {}-bit ring, clip ±{}, scale {:.1}",
        args.sites, args.dim, args.bits, args.clip, scale
    );
    match plan.degree {
        Some(k) => println!(
            "SecAgg+: degree k = {k}, threshold t = {} of {} holders",
            plan.threshold, plan.holders
        ),
        None => println!(
            "SecAgg (complete graph): threshold t = {} of {}",
            plan.threshold, plan.holders
        ),
    }
    let privacy = match plan.degree {
        Some(_) => format!("privacy failure ≤ 2^{:.1}", plan.log2_privacy_failure),
        None => format!(
            "private while at most {} sites are corrupt",
            plan.corrupt_tolerated
        ),
    };
    let abort = if plan.log2_correctness_failure == f64::NEG_INFINITY {
        "below 2^-1074".to_string()
    } else {
        format!("≤ 2^{:.1}", plan.log2_correctness_failure)
    };
    println!(
        "at dropout rate {} and corruption bound {}: {privacy}; a round aborts with probability {abort}",
        args.dropout, args.corruption
    );
    println!(
        "round | contributors | status | time | up / down | vs plaintext f32 | max error (bound)"
    );

    let mut failures = 0;
    for round in 1..=args.rounds {
        let mut rng = site_rng(seed, SiteId(u32::MAX - round as u32));
        let graph = match plan.degree {
            Some(k) => {
                let mut beacon = [0u8; 32];
                rand_core::Rng::fill_bytes(&mut rng, &mut beacon);
                GraphSpec::RandomRegular {
                    degree: k as u32,
                    seed: beacon,
                }
            }
            None => GraphSpec::Complete,
        };
        let updates: Vec<Vec<f32>> = ids
            .iter()
            .map(|_| {
                (0..args.dim)
                    .map(|_| uniform(&mut rng) * 2.0 - 1.0)
                    .collect()
            })
            .collect();
        let weights: Vec<u64> = ids
            .iter()
            .map(|_| 1 + rand_core::Rng::next_u64(&mut rng) % max_weight)
            .collect();
        let phases = [
            Phase::AdvertiseKeys,
            Phase::ShareKeys,
            Phase::MaskedInput,
            Phase::ConsistencyCheck,
            Phase::Unmasking,
        ];
        let mut drops = DropSchedule::new();
        for id in &ids {
            if f64::from(uniform(&mut rng)) < args.dropout {
                drops.insert(
                    *id,
                    phases[rand_core::Rng::next_u32(&mut rng) as usize % phases.len()],
                );
            }
        }
        let mut inputs = Vec::with_capacity(ids.len());
        for (u, w) in updates.iter().zip(&weights) {
            inputs.push(codec.encode(u, *w, &mut rng).map_err(|e| e.to_string())?);
        }
        let config = RoundConfig::new(RoundParams {
            session: SessionId([0x7e; 16]),
            round: Round(round),
            participants: ids.clone(),
            vector_len: codec.encoded_len() as u32,
            modulus,
            threshold: plan.threshold as u32,
            graph,
        })
        .map_err(|e| e.to_string())?;
        let sites = ids
            .iter()
            .zip(&identities)
            .zip(inputs.iter().cloned())
            .map(|((id, identity), input)| SimulatedSite {
                id: *id,
                identity: identity.clone(),
                input,
            })
            .collect();
        let start = Instant::now();
        let outcome =
            run_round(&config, &roster, sites, &drops, seed, false).map_err(|e| e.to_string())?;
        let elapsed = start.elapsed();
        let traffic = format!(
            "{:.1} / {:.1} MB",
            outcome.bytes_up as f64 / 1e6,
            outcome.bytes_down as f64 / 1e6
        );
        match (&outcome.status, &outcome.result) {
            (Status::Finished, Some(result)) => {
                let contributors = &result.contributors;
                let mut expected = PlainVector::zeros(modulus, codec.encoded_len());
                for c in contributors {
                    expected.add_assign(&inputs[c.0 as usize]);
                }
                let exact = expected == result.sum;
                let mean = codec.decode(&result.sum).map_err(|e| e.to_string())?;
                let total: u64 = contributors.iter().map(|c| weights[c.0 as usize]).sum();
                let bound = codec.mean_error_bound(contributors.len(), total);
                let max_error = (0..args.dim)
                    .map(|j| {
                        let truth: f64 = contributors
                            .iter()
                            .map(|c| {
                                f64::from(updates[c.0 as usize][j]) * weights[c.0 as usize] as f64
                            })
                            .sum::<f64>()
                            / total as f64;
                        (f64::from(mean.mean[j]) - truth).abs()
                    })
                    .fold(0.0, f64::max);
                let plaintext_bytes = (contributors.len() * args.dim * 4) as f64;
                let ok = exact && max_error <= bound + 1e-6;
                failures += usize::from(!ok);
                println!(
                    "{round:>5} | {:>3} of {:<3} | {} | {:.2} s | {traffic} | {:.2}× up | {max_error:.2e} ({bound:.2e})",
                    contributors.len(),
                    args.sites,
                    if ok { "sum exact" } else { "MISMATCH" },
                    elapsed.as_secs_f64(),
                    outcome.bytes_up as f64 / plaintext_bytes,
                );
            }
            (Status::Aborted(reason), _) => {
                println!(
                    "{round:>5} | {:>3} dropped | aborted: {reason} | {:.2} s | {traffic}",
                    drops.len(),
                    elapsed.as_secs_f64()
                );
            }
            (status, _) => {
                return Err(format!(
                    "round {round} ended in an unexpected state: {status:?}"
                ));
            }
        }
        if !outcome.site_errors.is_empty() || !outcome.aggregator_errors.is_empty() {
            return Err(format!(
                "round {round}: honest parties reported errors: {:?} {:?}",
                outcome.site_errors, outcome.aggregator_errors
            ));
        }
    }
    if failures > 0 {
        return Err(format!("{failures} round(s) decoded a wrong aggregate"));
    }
    Ok(())
}

fn uniform(rng: &mut impl rand_core::Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}
