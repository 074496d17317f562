//! The longitudinal lesion-burden figure and the agreement of measured with true burden
//! on held-out patients' serial scans (Bland–Altman, ICC, Spearman of day-to-day
//! changes), per arm over seeds.

use std::fmt::Write as _;
use std::path::Path;
use tessera_dp::Mechanism;
use tessera_eval::{bland_altman, icc_agreement, spearman};

use crate::arms::ArmResult;
use crate::error::ExpError;
use crate::figures::{Chart, figure};
use crate::seeds::{ArmRuns, mean_sd};
use crate::spec::ArmPlan;

/// Longitudinal lesion burden from the first federated arm (else the first arm), first
/// seed.
pub(crate) fn write_burden(dir: &Path, arms: &[ArmRuns<'_>]) -> Result<(), ExpError> {
    let pick = |secure: bool| {
        arms.iter().find(|a| match &a.first().arm.plan {
            ArmPlan::Federated(f) => {
                f.dp.mechanism == Mechanism::None && f.protocol.is_secure() == secure
            }
            _ => false,
        })
    };
    let Some(r) = pick(true)
        .or_else(|| pick(false))
        .or(arms.first())
        .map(ArmRuns::first)
    else {
        return Ok(());
    };
    if r.series.is_empty() {
        return Ok(());
    }
    let mut series = Vec::new();
    for s in &r.series {
        let points = |f: fn(&crate::arms::BurdenPoint) -> Option<f64>| {
            s.points
                .iter()
                .filter_map(|p| Some((f64::from(p.day), f(p)?)))
                .collect::<Vec<_>>()
        };
        series.push((format!("{} truth", s.patient), points(|p| p.truth)));
        series.push((format!("{} predicted", s.patient), points(|p| p.predicted)));
    }
    figure(
        &dir.join("figures"),
        "lesion-burden",
        &Chart {
            title: &format!("Lesion burden over serial scans ({})", r.arm.name),
            x_label: "day of scan",
            y_label: "lesion burden (% of lung)",
            series,
            x_log: false,
        },
    )
}

/// (truth, predicted) pairs.
type Pairs = Vec<(f64, f64)>;

/// One run's (truth, predicted) burden at every scan, and the (Δtruth, Δpredicted)
/// changes between consecutive scans of a patient.
fn burden_pairs(run: &ArmResult) -> (Pairs, Pairs) {
    let (mut level, mut change) = (Vec::new(), Vec::new());
    for s in &run.series {
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| Some((p.truth?, p.predicted?)))
            .collect();
        change.extend(
            points
                .windows(2)
                .map(|w| (w[1].0 - w[0].0, w[1].1 - w[0].1)),
        );
        level.extend(points);
    }
    (level, change)
}

/// Per arm, agreement of predicted with true burden (mean ± SD over seeds); empty
/// without series.
pub(crate) fn burden_table(arms: &[ArmRuns<'_>]) -> String {
    if arms.iter().all(|a| a.first().series.is_empty()) {
        return String::new();
    }
    let mut md = String::from(
        "| arm | scans | truth range (% of lung) | bias (pred − truth) | limits of agreement | ICC(A,1) | Spearman ρ of changes |\n|---|---|---|---|---|---|---|\n",
    );
    for a in arms {
        let (mut bias, mut low, mut high, mut icc, mut rho) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut scans, mut truths) = (0, Vec::new());
        for run in &a.runs {
            let (level, change) = burden_pairs(run);
            scans = level.len();
            truths.extend(level.iter().map(|p| p.0));
            if let Some(ba) = bland_altman(&level) {
                bias.push(ba.bias);
                low.push(ba.lower);
                high.push(ba.upper);
            }
            icc.extend(icc_agreement(&level));
            rho.extend(spearman(&change));
        }
        let range = match (
            truths.iter().copied().reduce(f64::min),
            truths.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) => format!("{lo:.1}–{hi:.1}"),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {scans} | {range} | {} | [{}, {}] | {} | {} |",
            a.name,
            mean_sd(&bias),
            mean_sd(&low),
            mean_sd(&high),
            mean_sd(&icc),
            mean_sd(&rho)
        );
    }
    md
}
