//! Round-level costs of the real state machines: one site's masking step (decrypting its
//! shares, agreeing pairwise keys, expanding k + 1 mask streams) and the aggregator's
//! unmasking step (reconstructing secrets, expanding every mask to remove), for
//! n ∈ {10, 100, 500}, m ∈ {10^5, 10^6}, dropout ∈ {0, 10%, 30%}, SecAgg and SecAgg+.
//!
//! A round with m = 10^6 has every site mask 4 MB per neighbour, so setting one up takes
//! far longer than the step being measured; criterion's repeated sampling is impractical
//! here, and each configuration is timed once (the primitives bench uses criterion).
//! SecAgg with n = 500 and m = 10^6 needs ~2·10^5 stream expansions of 4 MB just to set
//! up; it runs only with `TESSERA_BENCH_FULL=1`.
//!
//! `cargo bench -p tessera-secagg --bench rounds` prints a Markdown table.

use chacha20::ChaCha20Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tessera_secagg::MaskPrg;
use tessera_secagg::plan::{Plan, PlanRequest, plan_secagg, plan_secagg_plus};
use tessera_secagg::simulation::{site_rng, test_identities};
use tessera_secagg::{
    Aggregator, Envelope, GraphSpec, Modulus, Outgoing, PlainVector, Round, RoundConfig,
    RoundParams, SessionId, Site, SiteId, Status,
};

struct Measurement {
    graph: &'static str,
    n: usize,
    m: usize,
    dropout: f64,
    degree: usize,
    threshold: usize,
    site_masking: Duration,
    unmasking: Duration,
}

fn deliver(agg: &mut Aggregator, uplink: Vec<(SiteId, Envelope)>) -> Vec<Outgoing> {
    let phase = match agg.status() {
        Status::Collecting(p) => *p,
        s => panic!("round ended early: {s:?}"),
    };
    for (from, env) in uplink {
        agg.handle(from, env).expect("honest message");
    }
    if agg.status() == &Status::Collecting(phase) {
        agg.close_phase().expect("running round");
    }
    agg.take_outgoing()
}

fn reply(
    sites: &mut BTreeMap<SiteId, (Site, ChaCha20Rng)>,
    out: Vec<Outgoing>,
    skip: Option<SiteId>,
) -> Vec<(SiteId, Envelope)> {
    let by_site: BTreeMap<SiteId, Envelope> = out.into_iter().map(|o| (o.to, o.envelope)).collect();
    sites
        .par_iter_mut()
        .filter(|(id, _)| Some(**id) != skip)
        .filter_map(|(id, (site, rng))| {
            let env = by_site.get(id)?.clone();
            Some((*id, site.handle(env, rng).expect("honest site")))
        })
        .collect()
}

fn measure(graph_name: &'static str, n: usize, m: usize, dropout: f64) -> Measurement {
    // SecAgg+ takes the planner's degree and threshold for this dropout rate and a 5%
    // corruption bound; SecAgg (and SecAgg+ where no sparse graph qualifies) uses the
    // smallest majority threshold, which tolerates the dropouts measured here.
    let plan = match graph_name {
        "SecAgg+" => plan_secagg_plus(&PlanRequest::new(n, dropout, 0.05))
            .ok()
            .filter(|p| p.degree.is_some()),
        _ => None,
    }
    .unwrap_or(Plan {
        degree: None,
        threshold: n / 2 + 1,
        ..plan_secagg(&PlanRequest::new(n, 0.0, 0.0)).unwrap()
    });
    let graph = match plan.degree {
        Some(k) => GraphSpec::RandomRegular {
            degree: k as u32,
            seed: [5; 32],
        },
        None => GraphSpec::Complete,
    };
    let modulus = Modulus::new(20).unwrap();
    let ids: Vec<SiteId> = (0..n as u32).map(SiteId).collect();
    let config = RoundConfig::new(RoundParams {
        session: SessionId([1; 16]),
        round: Round(1),
        participants: ids.clone(),
        vector_len: m as u32,
        modulus,
        threshold: plan.threshold as u32,
        graph,
        context: [0; 32],
        mask_prg: MaskPrg::default(),
    })
    .unwrap();
    let (identities, roster) = test_identities(&ids, [2; 32]);
    let mut sites = BTreeMap::new();
    let mut uplink = Vec::new();
    for (id, identity) in ids.iter().zip(identities) {
        let mut rng = site_rng([3; 32], *id);
        let input = PlainVector::new(modulus, (0..m as u32).collect());
        let (site, ad) = Site::new(
            config.clone(),
            *id,
            identity,
            roster.clone(),
            input,
            &mut rng,
        )
        .unwrap();
        sites.insert(*id, (site, rng));
        uplink.push((*id, ad));
    }
    let mut agg = Aggregator::new(config.clone(), roster).unwrap();
    let out = deliver(&mut agg, uplink); // neighbour keys
    let uplink = reply(&mut sites, out, None);
    let mut out = deliver(&mut agg, uplink); // forwarded shares
    // Time one site's masking step on its own (both cores available to it).
    let measured = SiteId(0);
    let i = out.iter().position(|o| o.to == measured).unwrap();
    let env = out.remove(i).envelope;
    let (site, rng) = sites.get_mut(&measured).unwrap();
    let start = Instant::now();
    let masked = site.handle(env, rng).unwrap();
    let site_masking = start.elapsed();
    let mut uplink = reply(&mut sites, out, None);
    uplink.push((measured, masked));
    // The last ⌊dropout·n⌋ sites never send their masked input.
    let dropped = (dropout * n as f64).round() as usize;
    uplink.retain(|(id, _)| (id.0 as usize) < n - dropped);
    let out = deliver(&mut agg, uplink); // survivor set
    let uplink = reply(&mut sites, out, None);
    let out = deliver(&mut agg, uplink); // unmask requests
    let mut uplink = reply(&mut sites, out, None);
    let (last_id, last) = uplink.pop().unwrap();
    deliver_partial(&mut agg, uplink);
    let start = Instant::now();
    agg.handle(last_id, last).unwrap();
    let unmasking = start.elapsed();
    assert_eq!(agg.status(), &Status::Finished);
    assert_eq!(agg.result().unwrap().contributors.len(), n - dropped);
    Measurement {
        graph: graph_name,
        n,
        m,
        dropout,
        degree: plan.degree.unwrap_or(n - 1),
        threshold: plan.threshold,
        site_masking,
        unmasking,
    }
}

fn deliver_partial(agg: &mut Aggregator, uplink: Vec<(SiteId, Envelope)>) {
    for (from, env) in uplink {
        agg.handle(from, env).expect("honest message");
    }
}

/// `TESSERA_BENCH_CONFIGS="secagg+:10:1000000:0,secagg:100:100000:0.1"` picks
/// configurations (protocol:n:m:dropout) instead of the grid, as `scripts/bench-flower.sh`
/// does; `TESSERA_BENCH_JSON=1` prints one JSON object per configuration.
fn chosen_configs() -> Option<Vec<(&'static str, usize, usize, f64)>> {
    let text = std::env::var("TESSERA_BENCH_CONFIGS").ok()?;
    let parse = |c: &str| -> Option<(&'static str, usize, usize, f64)> {
        let parts: Vec<&str> = c.trim().split(':').collect();
        let [graph, n, m, dropout] = parts.as_slice() else {
            return None;
        };
        let graph = match graph.to_ascii_lowercase().as_str() {
            "secagg" => "SecAgg",
            "secagg+" => "SecAgg+",
            _ => return None,
        };
        Some((
            graph,
            n.parse().ok()?,
            m.parse().ok()?,
            dropout.parse().ok()?,
        ))
    };
    let configs: Option<Vec<_>> = text.split(',').map(parse).collect();
    match configs {
        Some(c) => Some(c),
        None => panic!("TESSERA_BENCH_CONFIGS: give protocol:n:m:dropout,… ({text})"),
    }
}

fn grid(filter: Option<&str>, full: bool) -> Vec<(&'static str, usize, usize, f64)> {
    let mut out = Vec::new();
    for graph in ["SecAgg", "SecAgg+"] {
        if filter.is_some_and(|f| !graph.eq_ignore_ascii_case(f)) {
            continue;
        }
        for n in [10, 100, 500] {
            for m in [100_000, 1_000_000] {
                if graph == "SecAgg" && n == 500 && m == 1_000_000 && !full {
                    continue;
                }
                for dropout in [0.0, 0.1, 0.3] {
                    out.push((graph, n, m, dropout));
                }
            }
        }
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects graphs by name.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let full = std::env::var("TESSERA_BENCH_FULL").is_ok_and(|v| v == "1");
    let json = std::env::var("TESSERA_BENCH_JSON").is_ok_and(|v| v == "1");
    let configs = chosen_configs().unwrap_or_else(|| grid(filter.as_deref(), full));
    if !json {
        println!("| protocol | n | m | dropout | k | t | site masking | aggregator unmasking |");
        println!("|---|---|---|---|---|---|---|---|");
    }
    for (graph, n, m, dropout) in configs {
        let r = measure(graph, n, m, dropout);
        let (mask_ms, unmask_ms) = (
            r.site_masking.as_secs_f64() * 1e3,
            r.unmasking.as_secs_f64() * 1e3,
        );
        if json {
            println!(
                "{{\"protocol\": \"{}\", \"n\": {}, \"m\": {}, \"dropout\": {}, \"k\": {}, \"t\": {}, \"site_masking_ms\": {mask_ms:.3}, \"unmasking_ms\": {unmask_ms:.3}}}",
                r.graph, r.n, r.m, r.dropout, r.degree, r.threshold
            );
        } else {
            println!(
                "| {} | {} | {} | {:.0}% | {} | {} | {mask_ms:.1} ms | {unmask_ms:.1} ms |",
                r.graph,
                r.n,
                r.m,
                r.dropout * 100.0,
                r.degree,
                r.threshold,
            );
        }
    }
}
