//! Tables (Markdown, LaTeX, CSV), figures (PNG and SVG with `plotters`), ledgers and
//! the generated write-up with the study's claims checked against the results.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Once;
use tessera_dp::Mechanism;
use tessera_eval::Estimate;
use tessera_fl::Protocol;

use crate::arms::ArmResult;
use crate::error::{ExpError, write_atomic};
use crate::profile::{Profile, ProfileName};
use crate::spec::{ArmPlan, Experiment};

/// A mean with its interval and n; one patient has no interval, and says so.
fn fmt(e: &Option<Estimate>) -> String {
    match e {
        Some(e) if e.n == 1 => format!("{:.3} (n = 1: no interval)", e.mean),
        Some(e) => format!("{:.3} [{:.3}, {:.3}] (n = {})", e.mean, e.low, e.high, e.n),
        None => "– (n = 0)".into(),
    }
}

fn cohorts(results: &[ArmResult]) -> Vec<(String, bool)> {
    results
        .first()
        .map(|r| {
            r.evals
                .iter()
                .map(|e| (e.cohort.clone(), e.external))
                .collect()
        })
        .unwrap_or_default()
}

/// Mean over external cohorts of the cohort mAP means.
pub fn external_map(result: &ArmResult) -> Option<f64> {
    let maps: Vec<f64> = result
        .evals
        .iter()
        .filter(|e| e.external)
        .filter_map(|e| e.summary.mean_average_precision.map(|m| m.mean))
        .collect();
    (!maps.is_empty()).then(|| maps.iter().sum::<f64>() / maps.len() as f64)
}

/// One row per (arm, cohort).
pub fn csv(results: &[ArmResult]) -> String {
    let mut out = String::from(
        "arm,cohort,external,patients,sensitivity,sensitivity_low,sensitivity_high,precision,precision_low,precision_high,fp_per_slice,fp_per_slice_low,fp_per_slice_high,map,map_low,map_high\n",
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
                "\"{}\",{},{},{},{},{},{},{}",
                r.arm.name,
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
}

fn cohort_tables(results: &[ArmResult], cohort: &str, synthetic: bool) -> (String, String) {
    let note = if synthetic {
        "Synthetic cohorts: these numbers measure Tessera's pipeline, not the study's hospitals."
    } else {
        "Cohorts as configured in the registry."
    };
    let mut md = format!(
        "# {cohort}\n\n{note} Score threshold 0.4; mean over patients [95% percentile-bootstrap interval, 2,000 resamples of patients] (n patients with the metric defined).\n\n| arm | sensitivity | precision | FP per slice | mAP |\n|---|---|---|---|---|\n"
    );
    let mut tex = format!(
        "% {note}\n\\begin{{tabular}}{{lllll}}\n\\hline\narm & sensitivity & precision & FP/slice & mAP \\\\\n\\hline\n"
    );
    for r in results {
        if let Some(e) = r.evals.iter().find(|e| e.cohort == cohort) {
            let s = &e.summary;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                r.arm.name,
                fmt(&s.sensitivity),
                fmt(&s.precision),
                fmt(&s.false_positives_per_slice),
                fmt(&s.mean_average_precision)
            );
            let _ = writeln!(
                tex,
                "{} & {} & {} & {} & {} \\\\",
                latex_escape(&r.arm.name),
                fmt(&s.sensitivity),
                fmt(&s.precision),
                fmt(&s.false_positives_per_slice),
                fmt(&s.mean_average_precision)
            );
        }
    }
    tex.push_str("\\hline\n\\end{tabular}\n");
    (md, tex)
}

fn summary_table(results: &[ArmResult]) -> String {
    let cs = cohorts(results);
    let mut md = String::from("| arm |");
    for (c, external) in &cs {
        let _ = write!(
            md,
            " {c}{} |",
            if *external { " (ext.)" } else { " (int.)" }
        );
    }
    md.push_str(" external mean |\n|---|");
    for _ in 0..=cs.len() {
        md.push_str("---|");
    }
    md.push('\n');
    for r in results {
        let _ = write!(md, "| {} |", r.arm.name);
        for (c, _) in &cs {
            let v = r
                .evals
                .iter()
                .find(|e| &e.cohort == c)
                .and_then(|e| e.summary.mean_average_precision);
            let _ = write!(
                md,
                " {} |",
                v.map_or("–".into(), |v| format!("{:.3}", v.mean))
            );
        }
        let _ = writeln!(
            md,
            " {} |",
            external_map(r).map_or("–".into(), |v| format!("{v:.3}"))
        );
    }
    md
}

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // A font compiled into the binary, so figures need no system fonts.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// A line chart: named series of (x, y) points.
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: Vec<(String, Vec<(f64, f64)>)>,
    x_log: bool,
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let points = chart.series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0f64, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y1) = (0.0, 1.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    y1 = (y1 * 1.1).max(y0 + 1e-6);
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55);
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(0, 0, 0),
        RGBColor(188, 189, 34),
        RGBColor(127, 127, 127),
        RGBColor(0, 0, 128),
    ];
    macro_rules! plot {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(chart.x_label)
                .y_desc(chart.y_label)
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, (name, pts)) in chart.series.iter().enumerate() {
                let color = &palette[i % palette.len()];
                ctx.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
            ctx.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(|e| e.to_string())?;
        }};
    }
    if chart.x_log && x0 > 0.0 {
        plot!(
            builder
                .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), y0..y1)
                .map_err(|e| e.to_string())?
        );
    } else {
        plot!(
            builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| e.to_string())?
        );
    }
    root.present().map_err(|e| e.to_string())
}

/// Writes `<stem>.svg` and `<stem>.png`, each atomically.
fn figure(dir: &Path, stem: &str, chart: &Chart) -> Result<(), ExpError> {
    register_font();
    let size = (900, 600);
    let svg_path = dir.join(format!("{stem}.svg"));
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, size).into_drawing_area(),
        chart,
    )
    .map_err(|message| ExpError::Figure {
        path: svg_path.clone(),
        message,
    })?;
    write_atomic(&svg_path, svg.as_bytes())?;
    let png_path = dir.join(format!("{stem}.png"));
    let tmp = dir.join(format!("{stem}.partial.png"));
    draw(BitMapBackend::new(&tmp, size).into_drawing_area(), chart).map_err(|message| {
        ExpError::Figure {
            path: png_path.clone(),
            message,
        }
    })?;
    std::fs::rename(&tmp, &png_path).map_err(|e| ExpError::io(&png_path, e))
}

fn dp_arms(results: &[ArmResult]) -> Vec<(&ArmResult, f64)> {
    results
        .iter()
        .filter_map(|r| match &r.arm.plan {
            ArmPlan::Federated(f) if f.dp.mechanism != Mechanism::None => Some((r, f.dp.epsilon)),
            _ => None,
        })
        .collect()
}

/// The first federated arm without DP using `protocol` (secure or plain).
fn federated(results: &[ArmResult], secure: bool) -> Option<&ArmResult> {
    results.iter().find(|r| match &r.arm.plan {
        ArmPlan::Federated(f) => {
            f.dp.mechanism == Mechanism::None && (f.protocol != Protocol::Plaintext) == secure
        }
        _ => false,
    })
}

fn cis_overlap(a: &Option<Estimate>, b: &Option<Estimate>) -> Option<bool> {
    Some(a.as_ref()?.low <= b.as_ref()?.high && b.as_ref()?.low <= a.as_ref()?.high)
}

/// The study's qualitative claims, checked on these results.
fn claims(results: &[ArmResult]) -> String {
    let mut out = String::new();
    let fed = federated(results, true).or_else(|| federated(results, false));
    let pooled = results
        .iter()
        .find(|r| matches!(r.arm.plan, ArmPlan::Pooled));
    let singles: Vec<&ArmResult> = results
        .iter()
        .filter(|r| matches!(r.arm.plan, ArmPlan::SingleSite { .. }))
        .collect();
    let verdict = |ok: bool| if ok { "**holds**" } else { "**does not hold**" };
    if let (Some(fed), Some(pooled)) = (fed, pooled) {
        let externals: Vec<(String, Option<bool>)> = fed
            .evals
            .iter()
            .filter(|e| e.external)
            .map(|e| {
                let p = pooled.evals.iter().find(|p| p.cohort == e.cohort);
                (
                    e.cohort.clone(),
                    p.and_then(|p| {
                        cis_overlap(
                            &e.summary.mean_average_precision,
                            &p.summary.mean_average_precision,
                        )
                    }),
                )
            })
            .collect();
        let overlapping = externals.iter().filter(|(_, o)| *o == Some(true)).count();
        let missing = externals.iter().filter(|(_, o)| o.is_none()).count();
        let verdict = |ok| {
            if missing > 0 || externals.is_empty() {
                "**cannot be assessed** (mAP undefined on some external cohort: no lesion in its evaluated slices)"
            } else {
                verdict(ok)
            }
        };
        let _ = writeln!(
            out,
            "1. *Federated ≈ pooled on external cohorts* — {}: the 95% CIs of mAP of `{}` and `{}` overlap on {overlapping} of {} external cohorts (external mean mAP {} vs {}).",
            verdict(overlapping == externals.len() && !externals.is_empty()),
            fed.arm.name,
            pooled.arm.name,
            externals.len(),
            external_map(fed).map_or("–".into(), |v| format!("{v:.3}")),
            external_map(pooled).map_or("–".into(), |v| format!("{v:.3}")),
        );
    }
    if let Some(fed) = fed
        && !singles.is_empty()
    {
        let f = external_map(fed).unwrap_or(f64::NAN);
        let assessable = f.is_finite() && singles.iter().all(|s| external_map(s).is_some());
        let verdict = |ok| {
            if assessable {
                verdict(ok)
            } else {
                "**cannot be assessed** (external mAP undefined for some arm)"
            }
        };
        let beaten = singles
            .iter()
            .filter(|s| external_map(s).is_some_and(|v| f > v))
            .count();
        let detail: Vec<String> = singles
            .iter()
            .map(|s| {
                format!(
                    "`{}` {}",
                    s.arm.name,
                    external_map(s).map_or("–".into(), |v| format!("{v:.3}"))
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "2. *Federated better than single-site models on external cohorts* — {}: `{}` (external mean mAP {f:.3}) beats {beaten} of {} single-site models ({}).",
            verdict(beaten == singles.len()),
            fed.arm.name,
            singles.len(),
            detail.join(", ")
        );
    }
    if let (Some(secure), Some(plain)) = (federated(results, true), federated(results, false)) {
        let gaps: Vec<f64> = secure
            .evals
            .iter()
            .filter_map(|e| {
                let p = plain.evals.iter().find(|p| p.cohort == e.cohort)?;
                Some(
                    (e.summary.mean_average_precision?.mean
                        - p.summary.mean_average_precision?.mean)
                        .abs(),
                )
            })
            .collect();
        let worst = gaps.iter().copied().fold(0.0, f64::max);
        let identical = secure.model_sha256.is_some() && secure.model_sha256 == plain.model_sha256;
        let _ = writeln!(
            out,
            "3. *Secure aggregation matches plain FedAvg up to quantisation* — {}: the largest per-cohort |ΔmAP| between `{}` and `{}` is {worst:.4} (criterion: ≤ 0.02); the two global models are {}. Both encode updates with the same fixed-point codec and the same rounding draws, and secure aggregation's unmasked sum is exact in the ring, so any difference would be a defect.",
            verdict(worst <= 0.02),
            secure.arm.name,
            plain.arm.name,
            if identical {
                "bitwise identical (same SHA-256)"
            } else {
                "not bitwise identical"
            }
        );
    }
    let dp = dp_arms(results);
    if !dp.is_empty() {
        let mut rows: Vec<String> = dp
            .iter()
            .map(|(r, eps)| {
                format!(
                    "ε = {eps}: {}",
                    external_map(r).map_or("–".into(), |v| format!("{v:.3}"))
                )
            })
            .collect();
        if let Some(s) = federated(results, true) {
            rows.push(format!(
                "no DP: {}",
                external_map(s).map_or("–".into(), |v| format!("{v:.3}"))
            ));
        }
        let _ = writeln!(
            out,
            "4. *The utility cost of DP* (external mean mAP): {}. See `figures/epsilon-utility.png`. Site-level DP over few sites is expensive: the noise on each coordinate of the sum has standard deviation about c/√(2ρ) per round (clip c, per-round zCDP ρ), while a clipped update carries about c/√d per coordinate over d parameters, so the noise stays below the signal only when ρ is of order d/2 per round.",
            rows.join("; ")
        );
    }
    out
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
    let tables = dir.join("tables");
    let figures = dir.join("figures");
    for (cohort, external) in cohorts(results) {
        let (md, tex) = cohort_tables(results, &cohort, synthetic);
        write_atomic(&tables.join(format!("{cohort}.md")), md.as_bytes())?;
        write_atomic(&tables.join(format!("{cohort}.tex")), tex.as_bytes())?;
        let series = results
            .iter()
            .map(|r| {
                let e = r.evals.iter().find(|e| e.cohort == cohort);
                let pts = e
                    .map(|e| {
                        e.froc
                            .iter()
                            .map(|p| (p.false_positives_per_slice, p.sensitivity))
                            .collect()
                    })
                    .unwrap_or_default();
                (r.arm.name.clone(), pts)
            })
            .collect();
        figure(
            &figures,
            &format!("froc-{cohort}"),
            &Chart {
                title: &format!(
                    "FROC, {cohort} ({})",
                    if external {
                        "external"
                    } else {
                        "internal test"
                    }
                ),
                x_label: "false positives per slice",
                y_label: "sensitivity",
                series,
                x_log: false,
            },
        )?;
    }
    let summary = summary_table(results);
    write_atomic(&tables.join("summary.md"), summary.as_bytes())?;
    let dp = dp_arms(results);
    if !dp.is_empty() {
        let mut by_mechanism: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for (r, eps) in &dp {
            let ArmPlan::Federated(f) = &r.arm.plan else {
                continue;
            };
            let label = format!(
                "{} ({})",
                f.dp.mechanism.name(),
                if f.protocol == Protocol::Plaintext {
                    "plaintext"
                } else {
                    "secure"
                }
            );
            if let Some(v) = external_map(r) {
                match by_mechanism.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, pts)) => pts.push((*eps, v)),
                    None => by_mechanism.push((label, vec![(*eps, v)])),
                }
            }
        }
        let (lo, hi) = dp.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, e)| {
            (a.min(*e), b.max(*e))
        });
        if let Some(v) = federated(results, true).and_then(external_map) {
            by_mechanism.push(("no DP (secure aggregation)".into(), vec![(lo, v), (hi, v)]));
        }
        for (_, pts) in by_mechanism.iter_mut() {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        figure(
            &figures,
            "epsilon-utility",
            &Chart {
                title: "Privacy vs utility (external cohorts)",
                x_label: "ε (δ as configured, whole training run)",
                y_label: "mean mAP over external cohorts",
                series: by_mechanism,
                x_log: true,
            },
        )?;
        let mut md = String::from(
            "# Privacy ledgers\n\nPrivacy unit: one site (site-level DP, zero-out adjacency: a site's update replaced by zero; which sites contributed and their sample counts are public). δ is per site over the whole training run.\n\n| arm | mechanism | accountant | rounds charged | ρ total | ε spent | δ | exact sampler |\n|---|---|---|---|---|---|---|---|\n",
        );
        for (r, _) in &dp {
            if let Some(l) = &r.ledger {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {:.4} | {:.3} | {:e} | {} |",
                    r.arm.name,
                    l.mechanism,
                    l.accountant,
                    l.entries.len(),
                    l.total_rho(),
                    l.spent(),
                    l.delta,
                    l.exact_sampler
                );
                let text = serde_json::to_vec_pretty(l).map_err(|e| ExpError::io(dir, e))?;
                write_atomic(
                    &dir.join("ledgers").join(format!("{}.json", r.arm.name)),
                    &text,
                )?;
            }
        }
        write_atomic(&dir.join("ledgers").join("README.md"), md.as_bytes())?;
    }
    // Longitudinal lesion burden from the first federated arm (else the first arm).
    let burden_arm = federated(results, true)
        .or_else(|| federated(results, false))
        .or(results.first());
    if let Some(r) = burden_arm
        && !r.series.is_empty()
    {
        let mut series = Vec::new();
        for s in &r.series {
            let truth = s
                .points
                .iter()
                .filter_map(|p| Some((f64::from(p.day), p.truth?)))
                .collect();
            let pred = s
                .points
                .iter()
                .filter_map(|p| Some((f64::from(p.day), p.predicted?)))
                .collect();
            series.push((format!("{} truth", s.patient), truth));
            series.push((format!("{} predicted", s.patient), pred));
        }
        figure(
            &figures,
            "lesion-burden",
            &Chart {
                title: &format!("Lesion burden over serial scans ({})", r.arm.name),
                x_label: "day of scan",
                y_label: "lesion burden (% of lung)",
                series,
                x_log: false,
            },
        )?;
    }
    let mut readme = write_up(experiment, profile, results, synthetic, &summary);
    if !missing.is_empty() {
        let _ = write!(
            readme,
            "\n\n## Incomplete\n\nAssembled from the arms finished so far; not yet finished: {}. \
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
    summary: &str,
) -> String {
    let profile_name = match profile.name {
        ProfileName::Quick => "quick",
        ProfileName::Full => "full",
    };
    let mut out = format!(
        "# {} — generated by `tessera reproduce --profile {profile_name} {}`\n\n{}\n\n",
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
         Federated arms ran through Tessera's coordinator and site loops (in-memory transport).\n",
        profile.model.input_size,
        profile.rounds,
        profile.local_steps,
        profile.batch_size,
        profile.learning_rate,
        profile.eval_slice_stride
    );
    out.push_str(
        "Each arm is one training run with one seed. The 95% intervals (percentile bootstrap \
         over patients) cover variation between patients, not between training runs; a small perturbation of training (other \
         stochastic-rounding draws, for instance) can move a model's mAP by several points, so \
         differences of that size between arms are within run-to-run variation.\n\n",
    );
    out.push_str("## mAP per cohort\n\n");
    out.push_str(summary);
    out.push_str("\nPer-cohort tables with sensitivity, precision, false positives per slice and mAP (95% percentile-bootstrap intervals over patients, n in every cell) are in `tables/` (Markdown and LaTeX); FROC curves, the ε–utility plot and the longitudinal lesion-burden figure in `figures/` (PNG and SVG).\n\n");
    let claims = claims(results);
    if !claims.is_empty() {
        out.push_str("## The study's claims, checked on these results\n\n");
        out.push_str(&claims);
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "## Rerun\n\n```sh\nbash scripts/reproduce.sh --profile {profile_name} {}\n```\n\nFinished arms are cached under `runs/{}-{profile_name}/arms/` by a hash of their configuration; an interrupted run resumes where it stopped.",
        experiment.name, experiment.name
    );
    out
}
