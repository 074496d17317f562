//! Prints the planner's choices as the Markdown table in the crate README:
//! `cargo run --release -p tessera-secagg --example plan_table`.

use tessera_secagg::plan::{PlanRequest, ThreatModel, plan_secagg, plan_secagg_plus};

fn pow2(log2: f64) -> String {
    if log2 == f64::NEG_INFINITY {
        "< 2^-1074".to_string()
    } else {
        format!("2^{log2:.0}")
    }
}

fn main() {
    println!(
        "| n | dropout | corrupt | threat | SecAgg t | SecAgg round failure | SecAgg+ k | SecAgg+ t | SecAgg+ privacy failure | SecAgg+ round failure |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in [3, 10, 100, 500, 1000, 10_000] {
        for (dropout, corrupt) in [(0.05, 0.05), (0.1, 0.1), (0.3, 0.1)] {
            for threat in [ThreatModel::SemiHonest, ThreatModel::ActiveServer] {
                let mut req = PlanRequest::new(n, dropout, corrupt);
                req.threat = threat;
                let full = match plan_secagg(&req) {
                    Ok(p) => format!("{} | {}", p.threshold, pow2(p.log2_correctness_failure)),
                    Err(_) => "infeasible | –".to_string(),
                };
                let sparse = match plan_secagg_plus(&req) {
                    Ok(p) => format!(
                        "{} | {} | {} | {}",
                        p.degree.map_or("complete".to_string(), |k| k.to_string()),
                        p.threshold,
                        if p.degree.is_none() {
                            "0".to_string()
                        } else {
                            pow2(p.log2_privacy_failure)
                        },
                        pow2(p.log2_correctness_failure)
                    ),
                    Err(_) => "infeasible | – | – | –".to_string(),
                };
                println!("| {n} | {dropout} | {corrupt} | {threat:?} | {full} | {sparse} |");
            }
        }
    }
}
