//! The study's claims, judged on the results with paired tests over patients and
//! training seeds (strict protocol, per-patient average precision on the external
//! cohorts): a two-level bootstrap of the mean difference, Wilcoxon's signed-rank test
//! on the seed-averaged differences, Holm's correction across the single-site
//! comparisons, and an equivalence test (TOST) with a stated margin for "federated ≈
//! pooled" and for what quantisation costs. A claim without enough evidence (too few
//! paired patients, or nothing detected by either arm) gets no verdict.

use std::fmt::Write as _;
use tessera_dp::Mechanism;
use tessera_eval::{EvalProtocol, PairedDifference, holm, paired_difference, wilcoxon_signed_rank};

use crate::arms::ArmResult;
use crate::seeds::{ArmRuns, by_arm, mean_sd, paired_ap};
use crate::spec::{ArmPlan, ArmProtocol};

/// Equivalence margin of "federated ≈ pooled", in mAP.
pub const POOLED_MARGIN: f64 = 0.05;
/// Equivalence margin of "quantisation costs nothing measurable", in mAP.
pub const QUANTISATION_MARGIN: f64 = 0.02;
/// Level of every test.
pub const ALPHA: f64 = 0.05;
/// Fewest (patient) pairs a claim is judged on.
pub const MIN_PAIRS: usize = 10;
const RESAMPLES: usize = 4000;
const BOOTSTRAP_SEED: u64 = 0x7e55e7a;
const PROTOCOL: EvalProtocol = EvalProtocol::Strict;

/// A paired comparison of arm `a` against arm `b`, or why there is none.
struct Comparison {
    diff: Result<PairedDifference, String>,
    wilcoxon_p: Option<f64>,
}

fn compare(a: &ArmRuns<'_>, b: &ArmRuns<'_>) -> Comparison {
    let diffs = paired_ap(a, b, PROTOCOL);
    let pairs = diffs.first().map_or(0, Vec::len);
    if pairs < MIN_PAIRS {
        return Comparison {
            diff: Err(format!(
                "too little evidence: {pairs} external patients with AP defined for both arms (at least {MIN_PAIRS} needed)"
            )),
            wilcoxon_p: None,
        };
    }
    let all_zero = |arm: &ArmRuns<'_>| arm.external_map(PROTOCOL).is_none_or(|v| v == 0.0);
    if all_zero(a) && all_zero(b) {
        return Comparison {
            diff: Err("too little evidence: both arms score mAP 0 on every external cohort".into()),
            wilcoxon_p: None,
        };
    }
    let per_patient: Vec<f64> = (0..pairs)
        .map(|p| diffs.iter().map(|row| row[p]).sum::<f64>() / diffs.len() as f64)
        .collect();
    Comparison {
        diff: paired_difference(&diffs, RESAMPLES, BOOTSTRAP_SEED)
            .ok_or_else(|| "no paired data".to_string()),
        wilcoxon_p: wilcoxon_signed_rank(&per_patient).map(|w| w.p_value),
    }
}

fn describe(d: &PairedDifference, wilcoxon_p: Option<f64>) -> String {
    format!(
        "ΔmAP {:+.3} [95% CI {:+.3}, {:+.3}] over {} seeds × {} patients, bootstrap p = {:.3}, Wilcoxon p = {}",
        d.mean,
        d.low,
        d.high,
        d.seeds,
        d.patients,
        d.p_value,
        wilcoxon_p.map_or("–".into(), |p| format!("{p:.3}"))
    )
}

fn federated<'a>(
    arms: &'a [ArmRuns<'a>],
    pick: fn(ArmProtocol) -> bool,
) -> Option<&'a ArmRuns<'a>> {
    arms.iter().find(|a| match &a.first().arm.plan {
        ArmPlan::Federated(f) => f.dp.mechanism == Mechanism::None && pick(f.protocol),
        _ => false,
    })
}

fn secure(p: ArmProtocol) -> bool {
    p.is_secure()
}

fn plaintext(p: ArmProtocol) -> bool {
    p == ArmProtocol::Plaintext
}

fn float(p: ArmProtocol) -> bool {
    p == ArmProtocol::Float
}

fn quantised(p: ArmProtocol) -> bool {
    p != ArmProtocol::Float
}

/// Claim 1: federated ≈ pooled, by TOST within ±[`POOLED_MARGIN`].
fn pooled_claim(out: &mut String, fed: &ArmRuns<'_>, pooled: &ArmRuns<'_>) {
    let c = compare(fed, pooled);
    let text = match &c.diff {
        Err(why) => format!("**cannot be assessed** ({why})"),
        Ok(d) => {
            let p_eq = d.equivalence_p(POOLED_MARGIN);
            let verdict = if p_eq < ALPHA {
                "**holds**"
            } else if d.p_value < ALPHA {
                "**does not hold**"
            } else {
                "**inconclusive**"
            };
            format!(
                "{verdict}: {}; equivalence within ±{POOLED_MARGIN} (TOST) p = {p_eq:.3}",
                describe(d, c.wilcoxon_p)
            )
        }
    };
    let _ = writeln!(
        out,
        "1. *Federated ≈ pooled on external cohorts* (`{}` − `{}`) — {text}.",
        fed.name, pooled.name
    );
}

/// Claim 2: federated better than every single-site model, Holm-corrected.
fn singles_claim(out: &mut String, fed: &ArmRuns<'_>, singles: &[&ArmRuns<'_>]) {
    let comparisons: Vec<(&str, Comparison)> =
        singles.iter().map(|s| (s.name, compare(fed, s))).collect();
    if let Some((name, Comparison { diff: Err(why), .. })) =
        comparisons.iter().find(|(_, c)| c.diff.is_err())
    {
        let _ = writeln!(
            out,
            "2. *Federated better than single-site models on external cohorts* — **cannot be assessed** (against `{name}`: {why})."
        );
        return;
    }
    let diffs: Vec<(&str, &PairedDifference, Option<f64>)> = comparisons
        .iter()
        .filter_map(|(n, c)| Some((*n, c.diff.as_ref().ok()?, c.wilcoxon_p)))
        .collect();
    let adjusted = holm(&diffs.iter().map(|(_, d, _)| d.p_value).collect::<Vec<_>>());
    let better = diffs
        .iter()
        .zip(&adjusted)
        .filter(|((_, d, _), p)| d.mean > 0.0 && **p < ALPHA)
        .count();
    let worse = diffs
        .iter()
        .zip(&adjusted)
        .filter(|((_, d, _), p)| d.mean < 0.0 && **p < ALPHA)
        .count();
    let verdict = if better == diffs.len() {
        "**holds**"
    } else if worse > 0 {
        "**does not hold**"
    } else {
        "**inconclusive**"
    };
    let detail: Vec<String> = diffs
        .iter()
        .zip(&adjusted)
        .map(|((n, d, w), p)| format!("vs `{n}`: {}, Holm-adjusted p = {p:.3}", describe(d, *w)))
        .collect();
    let _ = writeln!(
        out,
        "2. *Federated better than single-site models on external cohorts* (`{}`) — {verdict}: significantly better than {better} and worse than {worse} of {} ({}).",
        fed.name,
        diffs.len(),
        detail.join("; ")
    );
}

/// Claim 3: secure aggregation equals plain FedAvg exactly, and quantisation costs
/// nothing measurable against float FedAvg.
fn aggregation_claim(out: &mut String, arms: &[ArmRuns<'_>]) {
    if let (Some(s), Some(p)) = (federated(arms, secure), federated(arms, plaintext)) {
        let seeds = s.runs.len().min(p.runs.len());
        let identical = s
            .runs
            .iter()
            .zip(&p.runs)
            .all(|(a, b)| a.model_sha256.is_some() && a.model_sha256 == b.model_sha256);
        let _ = writeln!(
            out,
            "3. *Secure aggregation = plain FedAvg with the same codec* — {}: the global models of `{}` and `{}` are {} in {} of {seeds} seeds (both encode with the same fixed-point codec and rounding draws; the unmasked sum is exact in the ring).",
            if identical {
                "**holds**"
            } else {
                "**does not hold**"
            },
            s.name,
            p.name,
            if identical {
                "bitwise identical (same SHA-256)"
            } else {
                "not all bitwise identical"
            },
            if identical {
                seeds
            } else {
                s.runs
                    .iter()
                    .zip(&p.runs)
                    .filter(|(a, b)| a.model_sha256 == b.model_sha256)
                    .count()
            },
        );
    }
    let (Some(q), Some(f)) = (federated(arms, quantised), federated(arms, float)) else {
        return;
    };
    let c = compare(q, f);
    let text = match &c.diff {
        Err(why) => format!("**cannot be assessed** ({why})"),
        Ok(d) => {
            let p_eq = d.equivalence_p(QUANTISATION_MARGIN);
            format!(
                "{}: {}; equivalence within ±{QUANTISATION_MARGIN} (TOST) p = {p_eq:.3}",
                if p_eq < ALPHA {
                    "**holds**"
                } else if d.p_value < ALPHA {
                    "**does not hold**"
                } else {
                    "**inconclusive**"
                },
                describe(d, c.wilcoxon_p)
            )
        }
    };
    let _ = writeln!(
        out,
        "   *Quantisation costs nothing measurable* (`{}` − float FedAvg `{}`) — {text}.",
        q.name, f.name
    );
}

/// Claim 4: the utility of each DP arm.
fn dp_claim(out: &mut String, arms: &[ArmRuns<'_>]) {
    let mut patient_unit = false;
    let mut rows: Vec<String> = arms
        .iter()
        .filter_map(|a| match &a.first().arm.plan {
            ArmPlan::Federated(f) if f.dp.mechanism != Mechanism::None => {
                patient_unit |= f.dp.unit == tessera_dp::PrivacyUnit::Patient;
                Some(format!(
                    "ε = {}: {}",
                    f.dp.epsilon,
                    mean_sd(&a.external_maps(PROTOCOL))
                ))
            }
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    if let Some(s) = federated(arms, secure) {
        rows.push(format!("no DP: {}", mean_sd(&s.external_maps(PROTOCOL))));
    }
    if let Some(p) = arms
        .iter()
        .find(|a| matches!(a.first().arm.plan, ArmPlan::Public(_)))
    {
        rows.push(format!(
            "public model alone: {}",
            mean_sd(&p.external_maps(PROTOCOL))
        ));
    }
    let why = if patient_unit {
        "The privacy unit here is the patient: the noise is calibrated to one patient's clipped change while the signal sums the changes of the q·N patients sampled (secretly, which amplifies privacy), and only the fine-tuned part of a publicly pretrained model is private, so far fewer coordinates carry noise than under site-level DP."
    } else {
        "Site-level DP over few sites is expensive: the noise on each coordinate of the sum has standard deviation about c/√(2ρ) per round (clip c, per-round zCDP ρ), while a clipped update carries about c/√d per coordinate over d parameters, so the noise stays below the signal only when ρ is of order d/2 per round."
    };
    let _ = writeln!(
        out,
        "4. *The utility cost of DP* (external mean mAP, mean ± SD over seeds): {}. See `figures/epsilon-utility.png`. {why}",
        rows.join("; ")
    );
}

/// The claims section of the write-up (empty when the arms it needs are absent).
pub(crate) fn claims(results: &[ArmResult]) -> String {
    let arms = by_arm(results);
    let mut out = String::new();
    let fed = federated(&arms, secure).or_else(|| federated(&arms, plaintext));
    let pooled = arms
        .iter()
        .find(|a| matches!(a.first().arm.plan, ArmPlan::Pooled));
    let singles: Vec<&ArmRuns<'_>> = arms
        .iter()
        .filter(|a| matches!(a.first().arm.plan, ArmPlan::SingleSite { .. }))
        .collect();
    if let (Some(fed), Some(pooled)) = (fed, pooled) {
        pooled_claim(&mut out, fed, pooled);
    }
    if let Some(fed) = fed
        && !singles.is_empty()
    {
        singles_claim(&mut out, fed, &singles);
    }
    aggregation_claim(&mut out, &arms);
    dp_claim(&mut out, &arms);
    if !out.is_empty() {
        let _ = write!(
            out,
            "\nTests: per-patient average precision under the strict protocol on the external cohorts, paired by patient and seed; a two-level bootstrap ({RESAMPLES} resamples of seeds, then patients) gives the interval and a two-sided p-value, Wilcoxon's signed-rank test the seed-averaged per-patient differences; Holm's correction across the single-site comparisons; equivalence by two one-sided tests at α = {ALPHA}. A claim is judged on at least {MIN_PAIRS} paired patients.\n"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arms::CohortEval;
    use crate::spec::{Arm, FederatedArm, Transport};
    use tessera_eval::{CohortSummary, PatientScore};

    fn federated(protocol: ArmProtocol) -> ArmPlan {
        ArmPlan::Federated(FederatedArm {
            protocol,
            strategy: tessera_core::Strategy::FedAvg,
            sites: 3,
            dropout: 0.0,
            heterogeneity: 1.0,
            bits: 32,
            clip: 1.0,
            dp: tessera_dp::DpConfig::default(),
            transport: Transport::Memory,
            weighting: tessera_fl::Weighting::Samples,
            canaries: 0,
            fine_tune: None,
            site_weights: None,
        })
    }

    /// A run whose external patients have these APs (strict protocol).
    fn run(name: &str, plan: ArmPlan, replicate: usize, aps: &[f64]) -> ArmResult {
        let patients = aps
            .iter()
            .enumerate()
            .map(|(i, &ap)| PatientScore {
                patient: format!("p{i}"),
                sensitivity: Some(ap),
                precision: Some(ap),
                false_positives_per_slice: 0.1,
                average_precision: Some(ap),
            })
            .collect();
        let map = tessera_eval::bootstrap_ci(aps, 100, 1);
        ArmResult {
            arm: Arm {
                name: name.into(),
                plan,
                grid: Default::default(),
            },
            replicate,
            seed: replicate as u64,
            evals: vec![CohortEval {
                cohort: "ext".into(),
                external: true,
                protocol: EvalProtocol::Strict,
                summary: CohortSummary {
                    patients: aps.len(),
                    sensitivity: map,
                    precision: map,
                    false_positives_per_slice: map,
                    mean_average_precision: map,
                },
                froc: Vec::new(),
                patients,
            }],
            series: Vec::new(),
            rounds: Vec::new(),
            ledger: None,
            site_examples: Vec::new(),
            model_sha256: Some(format!("{name}-{replicate}")),
            audit: None,
        }
    }

    /// 30 patients' APs spread over [0.2, 0.8], shifted by `shift`, with seed noise.
    fn aps(shift: f64, seed: usize) -> Vec<f64> {
        (0..30)
            .map(|i| {
                let wiggle = ((i * 7 + seed * 13) % 11) as f64 / 100.0 - 0.05;
                (0.2 + 0.02 * i as f64 + shift + wiggle).clamp(0.0, 1.0)
            })
            .collect()
    }

    fn results(fed_shift: f64, pooled_shift: f64, single_shifts: &[f64]) -> Vec<ArmResult> {
        let mut out = Vec::new();
        for seed in 0..3 {
            for (k, s) in single_shifts.iter().enumerate() {
                let plan = ArmPlan::SingleSite {
                    site: format!("s{k}"),
                };
                out.push(run(&format!("single-{k}"), plan, seed, &aps(*s, seed)));
            }
            out.push(run(
                "pooled",
                ArmPlan::Pooled,
                seed,
                &aps(pooled_shift, seed + 5),
            ));
            out.push(run(
                "fedavg",
                federated(ArmProtocol::Secagg),
                seed,
                &aps(fed_shift, seed + 9),
            ));
        }
        out
    }

    fn line(text: &str, n: &str) -> String {
        text.lines()
            .find(|l| l.starts_with(n))
            .unwrap_or_else(|| panic!("no claim {n} in {text}"))
            .to_string()
    }

    #[test]
    fn equal_arms_are_equivalent_and_a_clear_gap_is_not() {
        let text = claims(&results(0.0, 0.0, &[-0.2, -0.25, -0.3]));
        assert!(line(&text, "1.").contains("**holds**"), "{text}");
        assert!(line(&text, "2.").contains("**holds**"), "{text}");
        let text = claims(&results(0.0, 0.15, &[-0.2, 0.2, -0.3]));
        assert!(line(&text, "1.").contains("**does not hold**"), "{text}");
        let two = line(&text, "2.");
        assert!(
            two.contains("**does not hold**") && two.contains("worse than 1 of 3"),
            "{two}"
        );
    }

    /// A single-site model only slightly worse than federated in some seeds is not
    /// called beaten after Holm's correction.
    #[test]
    fn a_small_inconsistent_gap_is_inconclusive() {
        let mut rs = results(0.0, 0.0, &[-0.2, -0.25, 0.0]);
        // single-2 differs from fedavg only by seed noise.
        for r in rs.iter_mut().filter(|r| r.arm.name == "single-2") {
            let seed = r.replicate;
            r.evals[0].patients = run("x", ArmPlan::Pooled, seed, &aps(0.0, seed + 20)).evals[0]
                .patients
                .clone();
        }
        let text = claims(&rs);
        assert!(line(&text, "2.").contains("**inconclusive**"), "{text}");
    }

    #[test]
    fn too_few_patients_or_nothing_detected_gets_no_verdict() {
        let few: Vec<ArmResult> = results(0.0, 0.0, &[-0.2])
            .into_iter()
            .map(|mut r| {
                r.evals[0].patients.truncate(MIN_PAIRS - 1);
                r
            })
            .collect();
        let text = claims(&few);
        assert!(
            line(&text, "1.").contains("**cannot be assessed** (too little evidence: 9"),
            "{text}"
        );
        let zeros: Vec<ArmResult> = (0..2)
            .flat_map(|s| {
                [
                    run("pooled", ArmPlan::Pooled, s, &[0.0; 20]),
                    run("fedavg", federated(ArmProtocol::Secagg), s, &[0.0; 20]),
                ]
            })
            .collect();
        let text = claims(&zeros);
        assert!(
            line(&text, "1.").contains("both arms score mAP 0"),
            "{text}"
        );
    }

    #[test]
    fn quantisation_is_judged_against_float_fedavg_and_identity_by_digest() {
        let mut rs = Vec::new();
        for seed in 0..2 {
            let mut plain = run(
                "plain",
                federated(ArmProtocol::Plaintext),
                seed,
                &aps(0.0, seed),
            );
            let mut secure = run(
                "secure",
                federated(ArmProtocol::Secagg),
                seed,
                &aps(0.0, seed),
            );
            plain.model_sha256 = Some(format!("m{seed}"));
            secure.model_sha256 = Some(format!("m{seed}"));
            rs.extend([plain, secure]);
            rs.push(run(
                "float",
                federated(ArmProtocol::Float),
                seed,
                &aps(0.001, seed),
            ));
        }
        let text = claims(&rs);
        assert!(
            line(&text, "3.").contains("**holds**: the global models"),
            "{text}"
        );
        let q = text
            .lines()
            .find(|l| l.contains("Quantisation costs nothing measurable"))
            .unwrap();
        assert!(q.contains("**holds**"), "{q}");
        rs[1].model_sha256 = Some("other".into());
        assert!(line(&claims(&rs), "3.").contains("**does not hold**"));
    }
}
