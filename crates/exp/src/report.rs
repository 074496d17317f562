//! Tables (Markdown, LaTeX, CSV), figures, ledgers and the generated write-up with the
//! study's claims judged on the results (see [`crate::claims`]). Every table names its
//! evaluation protocol; with several seeds, cells give mean ± SD over seeds and the
//! summary lists every seed's value.

use std::fmt::Write as _;
use std::path::Path;
use tessera_dp::Mechanism;
use tessera_eval::{Estimate, EvalProtocol};

use crate::arms::{ArmResult, PROTOCOLS};
use crate::burden::{burden_table, write_burden};
use crate::claims::claims;
use crate::error::{ExpError, write_atomic};
use crate::figures::{Chart, figure};
use crate::profile::{Profile, ProfileName};
use crate::seeds::{ArmRuns, by_arm, cell, external_map_with, mean, mean_sd};
use crate::spec::{ArmPlan, Experiment};

/// Mean over external cohorts of the cohort mAP means (strict protocol).
pub fn external_map(result: &ArmResult) -> Option<f64> {
    external_map_with(result, EvalProtocol::Strict)
}

/// The cohorts evaluated, in evaluation order.
fn cohorts(results: &[ArmResult]) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    for e in results.iter().flat_map(|r| &r.evals) {
        if !out.iter().any(|(c, _)| *c == e.cohort) {
            out.push((e.cohort.clone(), e.external));
        }
    }
    out
}

/// A table's file stem: `<cohort>` under the strict protocol, `<cohort>-authors` else.
fn stem(base: &str, protocol: EvalProtocol) -> String {
    match protocol {
        EvalProtocol::Strict => base.to_string(),
        other => format!("{base}-{}", other.name()),
    }
}

fn protocol_note(protocol: EvalProtocol) -> &'static str {
    match protocol {
        EvalProtocol::Strict => {
            "Protocol **strict** (PASCAL VOC matching: a second detection of a lesion is a false positive; AP over every detection, tied scores one point); 95% percentile-bootstrap intervals over patients."
        }
        EvalProtocol::Authors => {
            "Protocol **authors** (the study's released evaluation code: lenient hits, second hits and lesion-free slices ignored, nested false positives subtracted, AP over detections ≥ 0.4, FP per slice over the whole volume); intervals mean ± 1.96·SD/√n with the population SD, as theirs."
        }
    }
}

/// One row per (arm, seed, protocol, cohort).
pub fn csv(results: &[ArmResult]) -> String {
    let mut out = String::from(
        "arm,seed,protocol,cohort,external,patients,sensitivity,sensitivity_low,sensitivity_high,precision,precision_low,precision_high,fp_per_slice,fp_per_slice_low,fp_per_slice_high,map,map_low,map_high\n",
    );
    let cell = |e: &Option<Estimate>| match e {
        Some(e) => format!("{},{},{}", e.mean, e.low, e.high),
        None => ",,".into(),
    };
    for r in results {
        for e in &r.evals {
            let s = &e.summary;
            let _ = writeln!(
                out,
                "\"{}\",{},{},{},{},{},{},{},{},{}",
                r.arm.name,
                r.seed,
                e.protocol.name(),
                e.cohort,
                e.external,
                s.patients,
                cell(&s.sensitivity),
                cell(&s.precision),
                cell(&s.false_positives_per_slice),
                cell(&s.mean_average_precision)
            );
        }
    }
    out
}

fn latex_escape(s: &str) -> String {
    s.replace('_', "\\_")
        .replace('%', "\\%")
        .replace('&', "\\&")
        .replace('±', "$\\pm$")
}

fn cohort_tables(
    arms: &[ArmRuns<'_>],
    cohort: &str,
    protocol: EvalProtocol,
    synthetic: bool,
) -> (String, String) {
    let note = if synthetic {
        "Synthetic cohorts: these numbers measure Tessera's pipeline, not the study's hospitals."
    } else {
        "Cohorts as configured in the registry."
    };
    let seeds = arms.iter().map(|a| a.runs.len()).max().unwrap_or(1);
    let spread = if seeds > 1 {
        " With several training seeds a cell is the mean ± SD over seeds of the cohort means."
    } else {
        ""
    };
    let mut md = format!(
        "# {cohort} ({} protocol)\n\n{note} {} Score threshold 0.4; n = patients with the metric defined.{spread}\n\n| arm | sensitivity | precision | FP per slice | mAP |\n|---|---|---|---|---|\n",
        protocol.name(),
        protocol_note(protocol)
    );
    let mut tex = format!(
        "% {note} Protocol: {}.\n\\begin{{tabular}}{{lllll}}\n\\hline\narm & sensitivity & precision & FP/slice & mAP \\\\\n\\hline\n",
        protocol.name()
    );
    for a in arms {
        let evals = a.cohort(cohort, protocol);
        if evals.is_empty() {
            continue;
        }
        let pick = |f: fn(&tessera_eval::CohortSummary) -> Option<Estimate>| {
            cell(&evals.iter().map(|e| f(&e.summary)).collect::<Vec<_>>())
        };
        let cells = [
            pick(|s| s.sensitivity),
            pick(|s| s.precision),
            pick(|s| s.false_positives_per_slice),
            pick(|s| s.mean_average_precision),
        ];
        let _ = writeln!(md, "| {} | {} |", a.name, cells.join(" | "));
        let _ = writeln!(
            tex,
            "{} & {} \\\\",
            latex_escape(a.name),
            latex_escape(&cells.join(" & "))
        );
    }
    tex.push_str("\\hline\n\\end{tabular}\n");
    (md, tex)
}

/// What the ε in arm names means, for tables that carry them (empty without DP arms):
/// the unit and its adjacency, what is public, δ and the accountant.
fn privacy_note(arms: &[ArmRuns<'_>]) -> String {
    let mut lines = Vec::new();
    for a in arms {
        let ArmPlan::Federated(f) = &a.first().arm.plan else {
            continue;
        };
        if f.dp.mechanism == Mechanism::None {
            continue;
        }
        let accountant = a
            .first()
            .ledger
            .as_ref()
            .map_or("—".to_string(), |l| l.accountant.clone());
        let unit = match f.dp.unit {
            tessera_dp::PrivacyUnit::Site => {
                "one site (zero-out adjacency; participation and sample counts public)".to_string()
            }
            tessera_dp::PrivacyUnit::Patient => format!(
                "one patient (add/remove adjacency; patients sampled secretly with q = {}; \
                 participation and enrolled patients public, sampled counts not)",
                f.dp.sampling_rate
            ),
        };
        let line = format!(
            "{}: ε over the whole training run at δ = {:e} for {unit}; accountant {accountant}",
            f.dp.mechanism.name(),
            f.dp.delta
        );
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\nPrivacy of the DP arms — {}. Ledgers in `ledgers/`.\n",
        lines.join("; ")
    )
}

/// mAP per cohort and the external mean, per arm, under `protocol`.
fn summary_table(results: &[ArmResult], protocol: EvalProtocol) -> String {
    let cs = cohorts(results);
    let arms = by_arm(results);
    let seeds = arms.iter().map(|a| a.runs.len()).max().unwrap_or(1);
    let mut md = String::from("| arm |");
    for (c, external) in &cs {
        let _ = write!(
            md,
            " {c}{} |",
            if *external { " (ext.)" } else { " (int.)" }
        );
    }
    md.push_str(" external mean |");
    if seeds > 1 {
        md.push_str(" per seed |");
    }
    md.push_str("\n|---|");
    for _ in 0..=cs.len() + usize::from(seeds > 1) {
        md.push_str("---|");
    }
    md.push('\n');
    for a in &arms {
        let _ = write!(md, "| {} |", a.name);
        for (c, _) in &cs {
            let maps: Vec<f64> = a
                .cohort(c, protocol)
                .iter()
                .filter_map(|e| e.summary.mean_average_precision.map(|m| m.mean))
                .collect();
            let _ = write!(md, " {} |", mean_sd(&maps));
        }
        let externals = a.external_maps(protocol);
        let _ = write!(md, " {} |", mean_sd(&externals));
        if seeds > 1 {
            let each: Vec<String> = externals.iter().map(|v| format!("{v:.3}")).collect();
            let _ = write!(md, " {} |", each.join(" / "));
        }
        md.push('\n');
    }
    md
}

/// Per cohort and protocol: Markdown and LaTeX tables; per cohort: the FROC figure
/// (strict protocol, mean over seeds at each threshold).
fn write_cohorts(
    dir: &Path,
    arms: &[ArmRuns<'_>],
    results: &[ArmResult],
    synthetic: bool,
) -> Result<(), ExpError> {
    let tables = dir.join("tables");
    for (cohort, external) in cohorts(results) {
        for protocol in PROTOCOLS {
            let (md, tex) = cohort_tables(arms, &cohort, protocol, synthetic);
            let base = stem(&cohort, protocol);
            let md = md + &privacy_note(arms);
            write_atomic(&tables.join(format!("{base}.md")), md.as_bytes())?;
            write_atomic(&tables.join(format!("{base}.tex")), tex.as_bytes())?;
        }
        let series = arms
            .iter()
            .map(|a| {
                let evals = a.cohort(&cohort, EvalProtocol::Strict);
                let points = evals.first().map_or(0, |e| e.froc.len());
                let pts = (0..points)
                    .filter_map(|i| {
                        let at: Vec<_> = evals.iter().filter_map(|e| e.froc.get(i)).collect();
                        let fp: Vec<f64> = at.iter().map(|p| p.false_positives_per_slice).collect();
                        let sens: Vec<f64> = at.iter().map(|p| p.sensitivity).collect();
                        Some((mean(&fp)?, mean(&sens)?))
                    })
                    .collect();
                (a.name.to_string(), pts)
            })
            .collect();
        let kind = if external {
            "external"
        } else {
            "internal test"
        };
        figure(
            &dir.join("figures"),
            &format!("froc-{cohort}"),
            &Chart {
                title: &format!("FROC, {cohort} ({kind}; strict protocol)"),
                x_label: "false positives per slice",
                y_label: "sensitivity",
                series,
                x_log: false,
            },
        )?;
    }
    Ok(())
}

fn is_private(a: &ArmRuns<'_>) -> Option<f64> {
    match &a.first().arm.plan {
        ArmPlan::Federated(f) if f.dp.mechanism != Mechanism::None => Some(f.dp.epsilon),
        _ => None,
    }
}

/// The ε–utility figure and the ledgers (those of the first seed; every seed spends the
/// same ε).
fn write_privacy(dir: &Path, arms: &[ArmRuns<'_>]) -> Result<(), ExpError> {
    let dp: Vec<(&ArmRuns<'_>, f64)> = arms
        .iter()
        .filter_map(|a| Some((a, is_private(a)?)))
        .collect();
    if dp.is_empty() {
        return Ok(());
    }
    let mut by_mechanism: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (a, eps) in &dp {
        let ArmPlan::Federated(f) = &a.first().arm.plan else {
            continue;
        };
        let secure = if f.protocol.is_secure() {
            "secure"
        } else {
            "plaintext"
        };
        let label = match (&f.fine_tune, f.dp.unit) {
            (Some(_), tessera_dp::PrivacyUnit::Patient) => format!(
                "{} ({secure}, patient unit, q = {}, fine-tuned)",
                f.dp.mechanism.name(),
                f.dp.sampling_rate
            ),
            (Some(_), _) => format!("{} ({secure}, fine-tuned)", f.dp.mechanism.name()),
            (None, _) => format!("{} ({secure})", f.dp.mechanism.name()),
        };
        if let Some(v) = a.external_map(EvalProtocol::Strict) {
            match by_mechanism.iter_mut().find(|(l, _)| *l == label) {
                Some((_, pts)) => pts.push((*eps, v)),
                None => by_mechanism.push((label, vec![(*eps, v)])),
            }
        }
    }
    let (lo, hi) = dp.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, e)| {
        (a.min(*e), b.max(*e))
    });
    let no_dp = arms.iter().find(|a| match &a.first().arm.plan {
        ArmPlan::Federated(f) => f.dp.mechanism == Mechanism::None && f.protocol.is_secure(),
        _ => false,
    });
    if let Some(v) = no_dp.and_then(|a| a.external_map(EvalProtocol::Strict)) {
        by_mechanism.push(("no DP (secure aggregation)".into(), vec![(lo, v), (hi, v)]));
    }
    let public = arms
        .iter()
        .find(|a| matches!(a.first().arm.plan, ArmPlan::Public(_)));
    if let Some(v) = public.and_then(|a| a.external_map(EvalProtocol::Strict)) {
        by_mechanism.push(("public model only".into(), vec![(lo, v), (hi, v)]));
    }
    for (_, pts) in by_mechanism.iter_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    figure(
        &dir.join("figures"),
        "epsilon-utility",
        &Chart {
            title: "Privacy vs utility (external cohorts, strict protocol)",
            x_label: "ε (δ as configured, whole training run)",
            y_label: "mean mAP over external cohorts (mean over seeds)",
            series: by_mechanism,
            x_log: true,
        },
    )?;
    let mut md = String::from(
        "# Privacy ledgers\n\nPrivacy unit per arm. **site**: site-level DP, zero-out adjacency (a site's update replaced by zero); which sites contributed and their sample counts are public; accounted with zCDP (OpenDP's conversion). **patient**: one patient's data added or removed (add/remove adjacency); each round every site samples each of its patients with probability q using its own secret randomness, clips each sampled patient's change, and the coordinator divides by the fixed q × (enrolled patients), so how many were sampled is never released; which sites took part and how many patients are enrolled are public; accounted with Rényi DP and amplification by Poisson subsampling (`rdp-subsampled`: Zhu and Wang's general bound on the zCDP of the sum of discrete Gaussians). Noise is counted only from the contributors secure aggregation guarantees. δ is per unit over the whole training run.\n\n| arm | unit | q | mechanism | accountant | rounds charged | ρ total | ε spent | δ | exact sampler |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (a, _) in &dp {
        let Some(l) = &a.first().ledger else {
            continue;
        };
        let q = l.entries.first().map_or(1.0, |e| e.sampling_rate);
        let unit = match &a.first().arm.plan {
            ArmPlan::Federated(f) if f.dp.unit == tessera_dp::PrivacyUnit::Patient => "patient",
            _ => "site",
        };
        let _ = writeln!(
            md,
            "| {} | {unit} | {q} | {} | {} | {} | {:.4} | {:.3} | {:e} | {} |",
            a.name,
            l.mechanism,
            l.accountant,
            l.entries.len(),
            l.total_rho(),
            l.spent(),
            l.delta,
            l.exact_sampler
        );
        let text = serde_json::to_vec_pretty(l).map_err(|e| ExpError::io(dir, e))?;
        write_atomic(&dir.join("ledgers").join(format!("{}.json", a.name)), &text)?;
    }
    write_atomic(&dir.join("ledgers").join("README.md"), md.as_bytes())
}

/// Writes the whole report under `dir`.
pub fn write(
    dir: &Path,
    experiment: &Experiment,
    profile: &Profile,
    results: &[ArmResult],
    synthetic: bool,
    missing: &[String],
) -> Result<(), ExpError> {
    let arms = by_arm(results);
    write_cohorts(dir, &arms, results, synthetic)?;
    let mut summaries = Vec::new();
    for protocol in PROTOCOLS {
        let summary = summary_table(results, protocol) + &privacy_note(&arms);
        let name = format!("{}.md", stem("summary", protocol));
        write_atomic(&dir.join("tables").join(name), summary.as_bytes())?;
        summaries.push((protocol, summary));
    }
    write_privacy(dir, &arms)?;
    write_burden(dir, &arms)?;
    let burden = burden_table(&arms);
    if !burden.is_empty() {
        write_atomic(&dir.join("tables").join("burden.md"), burden.as_bytes())?;
    }
    let audits = crate::audit::audit_table(&arms);
    if !audits.is_empty() {
        write_atomic(
            &dir.join("tables").join("privacy-audit.md"),
            audits.as_bytes(),
        )?;
    }
    let mut readme = write_up(experiment, profile, results, synthetic, &summaries);
    if !audits.is_empty() {
        let _ = write!(
            readme,
            "\n## Empirical privacy audit\n\nCanary sites joined the federation, each in with probability ½ (sending its own random direction at the clip norm every round) or out (a zero update, the neighbour the ledger accounts); the auditor saw the global model after every round and guessed in for the top quarter of canary scores and out for the bottom quarter. The bound is Steinke, Nasr and Jagielski's one-run bound (NeurIPS 2023) at the ledger's δ: the mechanism is not (ε, δ)-DP for any smaller ε, with 95% confidence. It must stay below the claimed ε; without noise it shows what the audit can detect.\n\n{audits}"
        );
    }
    if !burden.is_empty() {
        let _ = write!(
            readme,
            "\n## Longitudinal lesion burden (held-out patients)\n\nSerial scans of held-out test patients; burden = share of the lung with lesion (truth) or with lesion score ≥ 0.1 (predicted). Agreement over every scan (Bland–Altman bias of predicted − truth with 95% limits of agreement, ICC(A,1) for absolute agreement) and Spearman's ρ of the day-to-day changes; mean ± SD over seeds. Figure: `figures/lesion-burden.png` (first seed of the first federated arm).\n\n{burden}"
        );
    }
    if !missing.is_empty() {
        let _ = write!(
            readme,
            "\n\n## Incomplete\n\nAssembled from the training runs finished so far; not yet finished: {}. \
             Rerun `tessera reproduce --report` once their shards are done.\n",
            missing.join(", ")
        );
    }
    write_atomic(&dir.join("README.md"), readme.as_bytes())
}

fn write_up(
    experiment: &Experiment,
    profile: &Profile,
    results: &[ArmResult],
    synthetic: bool,
    summaries: &[(EvalProtocol, String)],
) -> String {
    let profile_name = match profile.name {
        ProfileName::Quick => "quick",
        ProfileName::Full => "full",
    };
    let seeds = experiment.seeds;
    let seed_flag = if seeds > 1 {
        format!(" --seeds {seeds}")
    } else {
        String::new()
    };
    let mut out = format!(
        "# {} — generated by `tessera reproduce --profile {profile_name}{seed_flag} {}`\n\n{}\n\n",
        experiment.name, experiment.name, experiment.description
    );
    if synthetic {
        out.push_str(
            "**Every number here comes from synthetic cohorts** shaped like the study's (three Hong Kong \
             training sites, four external cohorts; see `datasets.toml`). They test Tessera's pipeline \
             end to end; they are not the study's results, which were obtained on hospital data that is \
             not public.\n\n",
        );
    }
    let _ = writeln!(
        out,
        "Profile `{profile_name}`: detector input {}², {} federated rounds × {} local steps (batch {}, Adam {}), \
         single-site and pooled models trained for the same number of steps; every {}-th lung slice evaluated. \
         Federated arms ran through Tessera's coordinator and site loops (in-memory transport); `float` \
         is FedAvg averaged in floating point without the codec.\n",
        profile.model.input_size,
        profile.rounds,
        profile.local_steps,
        profile.batch_size,
        profile.learning_rate,
        profile.eval_slice_stride
    );
    let seeds_text = if seeds > 1 {
        format!(
            "Each arm was trained {seeds} times, with seeds {}–{} (initial model, batches, rounding). Tables give the mean ± SD over seeds and each seed's value; the claims below are judged by paired tests over patients and seeds.",
            experiment.seed,
            experiment.replicate_seed(seeds - 1)
        )
    } else {
        "Each arm is one training run with one seed, so the intervals (over patients) do not cover run-to-run variation, which can move a model's mAP by several points; run with `--seeds N` to measure it.".to_string()
    };
    let _ = writeln!(out, "{seeds_text}\n");
    out.push_str(
        "**What varies across machines.** On one machine a rerun is byte-identical (tested). Across \
         machines libtorch's CPU kernels would differ with the instruction set (AVX-512 against AVX2 \
         sums in another order, enough to move a model's mAP by several points), so `tessera` pins \
         ATen, oneDNN and MKL to AVX2 (`ATEN_CPU_CAPABILITY`, `ONEDNN_MAX_CPU_ISA`, `MKL_CBWR`) and \
         fixes every trainer's thread count; `scripts/isa-check.sh` shows pinned runs byte-identical \
         natively and on an emulated AVX2-only CPU, and unpinned ones different. What the pins cannot \
         cover: other libtorch builds, CUDA, and CPUs without AVX2. `manifest.json` records the pins, \
         CPU, libtorch build and threads of this run.\n\n",
    );
    for (protocol, summary) in summaries {
        let _ = writeln!(
            out,
            "## mAP per cohort — {} protocol\n\n{}\n\n{summary}",
            protocol.name(),
            protocol_note(*protocol)
        );
    }
    out.push_str("Per-cohort tables with sensitivity, precision, false positives per slice and mAP (n in every cell) are in `tables/` under both protocols (`<cohort>.md` strict, `<cohort>-authors.md` the authors'; Markdown and LaTeX); FROC curves, the ε–utility plot and the longitudinal lesion-burden figure in `figures/` (PNG and SVG). `results.csv` has every (arm, seed, protocol, cohort); each run's `result.json` keeps every patient's metrics.\n\n");
    let claims = claims(results);
    if !claims.is_empty() {
        out.push_str("## The study's claims, judged on these results\n\n");
        out.push_str(&claims);
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "## Rerun\n\n```sh\nbash scripts/reproduce.sh --profile {profile_name}{seed_flag} {}\n```\n\nFinished training runs are cached under `runs/{}-{profile_name}/arms/` by a hash of their configuration and seed; an interrupted run resumes where it stopped.",
        experiment.name, experiment.name
    );
    out
}
