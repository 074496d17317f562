//! `tessera simulate`: a federation in one process — the real coordinator and site
//! loops over in-memory links — with random dropouts, checking every round's global
//! model against the plaintext weighted mean.

use clap::ValueEnum;
use rand_core::Rng;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tessera_core::{LocalTrainingConfig, Strategy};
use tessera_fl::{FederationConfig, KnownUpdateTrainer, Protocol, loopback, memory};
use tessera_secagg::plan::{PlanRequest, plan_secagg, plan_secagg_plus};
use tessera_secagg::simulation::site_rng;
use tessera_secagg::{FixedPoint, Modulus, Phase, SiteId};

#[derive(Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
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
    /// Parameters of the (known-update) model.
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
    #[arg(long, value_enum, default_value_t = ProtocolArg::SecaggPlus)]
    protocol: ProtocolArg,
    /// Bits per coordinate of the aggregation ring (8 to 32).
    #[arg(long, default_value_t = 24)]
    bits: u8,
    /// Clipping range of each coordinate of a site's update.
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Connect the sites to the coordinator over real QUIC with mutual TLS on
    /// 127.0.0.1 (a throwaway PKI) instead of in-memory links.
    #[arg(long)]
    quic: bool,
    /// Deadline of each secure-aggregation phase (and, plus a second, of local
    /// training); a silent site costs the round this long.
    #[arg(long, default_value_t = 500)]
    phase_timeout_ms: u64,
}

fn uniform(rng: &mut impl rand_core::Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}

pub fn run(args: &SimulateArgs) -> Result<(), String> {
    let modulus = Modulus::new(args.bits).map_err(|e| format!("--bits: {e}"))?;
    let request = PlanRequest::new(args.sites, args.dropout, args.corruption);
    let (protocol, plan) = match args.protocol {
        ProtocolArg::Secagg => (Protocol::Secagg, plan_secagg(&request)),
        ProtocolArg::SecaggPlus => (Protocol::SecaggPlus, plan_secagg_plus(&request)),
    };
    let plan = plan.map_err(|e| e.to_string())?;
    let max_weight = 1000;
    let scale = FixedPoint::max_scale(modulus, args.clip, args.sites);
    FixedPoint::new(modulus, args.clip, scale, args.sites, max_weight, args.dim)
        .map_err(|e| e.to_string())?;
    println!(
        "{} sites, {} parameters, {}-bit ring, clip ±{}, scale {scale:.1}",
        args.sites, args.dim, args.bits, args.clip
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

    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&args.seed.to_le_bytes());
    let mut rng = site_rng(seed, SiteId(u32::MAX));
    let steps: Vec<f32> = (0..args.sites)
        .map(|_| (uniform(&mut rng) * 2.0 - 1.0) * 0.5 * args.clip)
        .collect();
    let weights: Vec<u64> = (0..args.sites)
        .map(|_| 1 + u64::from(rng.next_u32()) % max_weight)
        .collect();
    let phases = [
        Phase::AdvertiseKeys,
        Phase::ShareKeys,
        Phase::MaskedInput,
        Phase::ConsistencyCheck,
        Phase::Unmasking,
    ];
    let mut silent: BTreeMap<SiteId, BTreeMap<u64, Phase>> = BTreeMap::new();
    for round in 1..=args.rounds {
        for site in 0..args.sites as u32 {
            if f64::from(uniform(&mut rng)) < args.dropout {
                silent
                    .entry(SiteId(site))
                    .or_default()
                    .insert(round, phases[rng.next_u32() as usize % phases.len()]);
            }
        }
    }
    let work = std::env::temp_dir().join(format!("tessera-simulate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let config = FederationConfig {
        session: [0x5e; 16],
        strategy: Strategy::FedAvg,
        training: LocalTrainingConfig {
            steps: 1,
            batch_size: 1,
            learning_rate: 0.0,
            proximal_mu: 0.0,
            seed: args.seed,
        },
        protocol,
        dropout_rate: args.dropout,
        corruption_rate: args.corruption,
        bits: args.bits,
        clip: args.clip,
        max_weight,
        sample_fraction: 1.0,
        training_timeout: Duration::from_millis(args.phase_timeout_ms + 1000),
        phase_timeout: Duration::from_millis(args.phase_timeout_ms),
        checkpoint: work.join("checkpoint.bin"),
        dp: tessera_fl::DpConfig::default(),
    };
    let layout = KnownUpdateTrainer::layout_for(args.dim).map_err(|e| e.to_string())?;
    let trainers: Vec<KnownUpdateTrainer> = steps
        .iter()
        .zip(&weights)
        .map(|(s, w)| KnownUpdateTrainer::new(args.dim, *s, *w))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let result = runtime.block_on(async {
        let (mut coordinator, traffic, endpoint) = if args.quic {
            let fed = loopback::start(config, layout, vec![0.0; args.dim], trainers, &silent, &work, seed)
                .await
                .map_err(|e| e.to_string())?;
            println!("sites connected over QUIC with mutual TLS on 127.0.0.1");
            (fed.coordinator, fed.traffic, Some(fed.endpoint))
        } else {
            let fed = memory::start(config, layout, vec![0.0; args.dim], trainers, &silent, &work.join("transcripts"), seed)
                .map_err(|e| e.to_string())?;
            (fed.coordinator, fed.traffic, None)
        };
        println!("round | contributors | status | time | up / down | max error (bound)");
        let mut expected = 0.0f64;
        let mut failures = 0;
        for _ in 0..args.rounds {
            let (up0, down0) = traffic.snapshot();
            let start = Instant::now();
            let report = coordinator.run_round().await.map_err(|e| e.to_string())?;
            let elapsed = start.elapsed().as_secs_f64();
            let (up1, down1) = traffic.snapshot();
            let traffic = format!("{:.1} / {:.1} MB", (up1 - up0) as f64 / 1e6, (down1 - down0) as f64 / 1e6);
            if let Some(reason) = &report.aborted {
                println!("{:>5} | {:>3} of {:<3} | aborted: {reason} | {elapsed:.2} s | {traffic}", report.round, 0, args.sites);
                continue;
            }
            let total: u64 = report.contributors.iter().map(|c| weights[c.0 as usize]).sum();
            expected += report.contributors.iter().map(|c| f64::from(steps[c.0 as usize]) * weights[c.0 as usize] as f64).sum::<f64>() / total as f64;
            // quantisation (below n·W/(s·Σw) per round) plus f32 rounding of the model
            let bound = report.round as f64 * (args.sites as f64 * max_weight as f64 / (scale * total as f64) + 1e-6);
            let error = coordinator.global().iter().map(|g| (f64::from(*g) - expected).abs()).fold(0.0, f64::max);
            let ok = error <= bound && total == report.total_weight;
            failures += usize::from(!ok);
            println!(
                "{:>5} | {:>3} of {:<3} | {} | {elapsed:.2} s | {traffic} | {error:.2e} ({bound:.2e})",
                report.round,
                report.contributors.len(),
                args.sites,
                if ok { "within bound" } else { "MISMATCH" },
            );
        }
        coordinator.shutdown().await;
        if let Some(endpoint) = endpoint {
            tokio::time::sleep(Duration::from_millis(100)).await;
            endpoint.close(0u32.into(), b"done");
        }
        if failures > 0 { Err(format!("{failures} round(s) produced a wrong global model")) } else { Ok(()) }
    });
    let _ = std::fs::remove_dir_all(&work);
    result
}
