//! `tessera simulate`: a known-update federation in one process (the real coordinator
//! and site machines, over in-memory links or loopback QUIC) with random dropouts,
//! each round's global model checked against the plaintext weighted mean. The work is
//! `tessera_fl::sim`'s; this file parses and prints.
//!
//! Exit codes: 0 when every round completed with the right model; 2 when some rounds
//! aborted; 1 when a round produced a wrong model, or on error.

use clap::ValueEnum;
use std::process::ExitCode;
use std::time::Duration;
use tessera_fl::Protocol;
use tessera_fl::sim::{RoundRow, SimulationSpec, run};

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
    /// Backstop deadline of each phase. Simulated dropouts withdraw explicitly, so
    /// results do not depend on it (or on load) unless a site is truly stuck. Default:
    /// 60 s plus 20 ms per site and 10^5 coordinates, since every simulated site's work
    /// shares this machine's cores (at 10,000 sites a phase's work alone took over a
    /// minute on 2 cores, and a flat 60 s cut 1,434 sites off the masked input).
    #[arg(long)]
    phase_timeout_ms: Option<u64>,
    /// The mask generator: aes-256-ctr or chacha20.
    #[arg(long, default_value = "aes-256-ctr")]
    mask_prg: tessera_secagg::MaskPrg,
}

fn print_plan(spec: &SimulationSpec) -> Result<f64, String> {
    let p = spec.plan().map_err(|e| e.to_string())?;
    println!(
        "{} sites, {} parameters, {}-bit ring, clip ±{}, scale {:.1}",
        spec.sites, spec.dim, spec.bits, spec.clip, p.scale
    );
    let plan = &p.plan;
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
        spec.dropout, spec.corruption
    );
    Ok(p.scale)
}

fn print_row(row: &RoundRow, sites: usize) {
    let r = &row.report;
    let traffic = format!(
        "{:.1} / {:.1} MB",
        row.up as f64 / 1e6,
        row.down as f64 / 1e6
    );
    let secs = row.elapsed.as_secs_f64();
    match (&r.aborted, row.check) {
        (Some(cause), _) => println!(
            "{:>5} | {:>3} of {sites:<3} | aborted: {cause} | {secs:.2} s | {traffic}",
            r.round, 0
        ),
        (None, Some(c)) => println!(
            "{:>5} | {:>3} of {sites:<3} | {} | {secs:.2} s | {traffic} | {:.2e} ({:.2e})",
            r.round,
            r.contributors.len(),
            if c.ok { "within bound" } else { "MISMATCH" },
            c.max_error,
            c.bound
        ),
        (None, None) => {}
    }
}

/// 60 s, plus 20 ms for each site and 10^5 coordinates (see `--phase-timeout-ms`).
fn default_phase_timeout_ms(sites: usize, dim: usize) -> u64 {
    let per_site = 20 * (dim as u64).div_ceil(100_000).max(1);
    60_000u64.saturating_add(per_site.saturating_mul(sites as u64))
}

pub fn run_command(args: &SimulateArgs) -> Result<ExitCode, String> {
    // Thousands of sites' small vectors would fragment heap arenas (see the module).
    tessera_fl::allocator::map_large_buffers();
    let spec = SimulationSpec {
        sites: args.sites,
        dim: args.dim,
        rounds: args.rounds,
        dropout: args.dropout,
        corruption: args.corruption,
        protocol: match args.protocol {
            ProtocolArg::Secagg => Protocol::Secagg,
            ProtocolArg::SecaggPlus => Protocol::SecaggPlus,
        },
        bits: args.bits,
        clip: args.clip,
        seed: args.seed,
        quic: args.quic,
        phase_timeout: Duration::from_millis(
            args.phase_timeout_ms
                .unwrap_or_else(|| default_phase_timeout_ms(args.sites, args.dim))
                .max(1),
        ),
        max_weight: 1000,
        mask_prg: args.mask_prg,
    };
    print_plan(&spec)?;
    let work = std::env::temp_dir().join(format!("tessera-simulate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    if spec.quic {
        println!("sites connect over QUIC with mutual TLS on 127.0.0.1");
    }
    println!("round | contributors | status | time | up / down | max error (bound)");
    let outcome = runtime.block_on(run(&spec, &work, &mut |row| print_row(row, spec.sites)));
    let _ = std::fs::remove_dir_all(&work);
    let outcome = outcome.map_err(|e| e.to_string())?;
    if outcome.wrong > 0 {
        return Err(format!(
            "{} round(s) produced a wrong global model",
            outcome.wrong
        ));
    }
    if outcome.aborted > 0 {
        eprintln!("{} of {} rounds aborted", outcome.aborted, spec.rounds);
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}
