//! Results grouped by arm over training seeds: per-seed values, mean ± SD, and the
//! per-patient pairing that the claims' tests use.

use std::collections::BTreeMap;
use tessera_eval::{Estimate, EvalProtocol};

use crate::arms::{ArmResult, CohortEval};

/// One arm's training runs (one per seed), in seed order.
pub(crate) struct ArmRuns<'a> {
    pub name: &'a str,
    pub runs: Vec<&'a ArmResult>,
}

impl<'a> ArmRuns<'a> {
    pub fn first(&self) -> &'a ArmResult {
        self.runs[0]
    }

    /// Each run's external mean mAP under `protocol` (runs where it is undefined left
    /// out).
    pub fn external_maps(&self, protocol: EvalProtocol) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| external_map_with(r, protocol))
            .collect()
    }

    /// Mean over seeds of the external mean mAP under `protocol`.
    pub fn external_map(&self, protocol: EvalProtocol) -> Option<f64> {
        mean(&self.external_maps(protocol))
    }

    /// The cohort's evaluation under `protocol` in every run that has it.
    pub fn cohort(&self, cohort: &str, protocol: EvalProtocol) -> Vec<&'a CohortEval> {
        self.runs
            .iter()
            .filter_map(|r| find_eval(r, cohort, protocol))
            .collect()
    }
}

/// Results grouped by arm, arms in the order they first appear.
pub(crate) fn by_arm(results: &[ArmResult]) -> Vec<ArmRuns<'_>> {
    let mut out: Vec<ArmRuns<'_>> = Vec::new();
    for r in results {
        match out.iter_mut().find(|a| a.name == r.arm.name) {
            Some(a) => a.runs.push(r),
            None => out.push(ArmRuns {
                name: &r.arm.name,
                runs: vec![r],
            }),
        }
    }
    for a in &mut out {
        a.runs.sort_by_key(|r| r.replicate);
    }
    out
}

pub(crate) fn find_eval<'a>(
    result: &'a ArmResult,
    cohort: &str,
    protocol: EvalProtocol,
) -> Option<&'a CohortEval> {
    result
        .evals
        .iter()
        .find(|e| e.cohort == cohort && e.protocol == protocol)
}

/// Mean over external cohorts of the cohort mAP means, under `protocol`.
pub fn external_map_with(result: &ArmResult, protocol: EvalProtocol) -> Option<f64> {
    let maps: Vec<f64> = result
        .evals
        .iter()
        .filter(|e| e.external && e.protocol == protocol)
        .filter_map(|e| e.summary.mean_average_precision.map(|m| m.mean))
        .collect();
    mean(&maps)
}

pub(crate) fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Sample standard deviation; `None` below two values.
pub(crate) fn sd(values: &[f64]) -> Option<f64> {
    let m = mean(values)?;
    (values.len() > 1).then(|| {
        (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
    })
}

/// "0.273" for one value, "0.273 ± 0.021" over several, "–" for none.
pub(crate) fn mean_sd(values: &[f64]) -> String {
    match (mean(values), sd(values)) {
        (Some(m), Some(s)) => format!("{m:.3} ± {s:.3}"),
        (Some(m), None) => format!("{m:.3}"),
        _ => "–".into(),
    }
}

/// A cohort metric over runs: one run shows its mean and interval (or says there is
/// none); several show mean ± SD over seeds of the cohort means, with n patients.
pub(crate) fn cell(estimates: &[Option<Estimate>]) -> String {
    match estimates {
        [] => "– (n = 0)".into(),
        [one] => match one {
            Some(e) if e.n == 1 => format!("{:.3} (n = 1: no interval)", e.mean),
            Some(e) => format!("{:.3} [{:.3}, {:.3}] (n = {})", e.mean, e.low, e.high, e.n),
            None => "– (n = 0)".into(),
        },
        many => {
            let means: Vec<f64> = many.iter().flatten().map(|e| e.mean).collect();
            let n = many.iter().flatten().map(|e| e.n).max().unwrap_or(0);
            if means.is_empty() {
                return "– (n = 0)".into();
            }
            format!("{} over {} seeds (n = {n})", mean_sd(&means), means.len())
        }
    }
}

/// Per-patient differences `a − b` of average precision under `protocol` on external
/// cohorts, `[seed][patient]`, over the seeds both arms ran and the patients whose AP
/// is defined for both arms in every one of them.
pub(crate) fn paired_ap(a: &ArmRuns<'_>, b: &ArmRuns<'_>, protocol: EvalProtocol) -> Vec<Vec<f64>> {
    type PerPatient = BTreeMap<(String, String), f64>;
    let aps = |r: &ArmResult| -> PerPatient {
        r.evals
            .iter()
            .filter(|e| e.external && e.protocol == protocol)
            .flat_map(|e| {
                e.patients.iter().filter_map(|p| {
                    Some(((e.cohort.clone(), p.patient.clone()), p.average_precision?))
                })
            })
            .collect()
    };
    let pairs: Vec<(PerPatient, PerPatient)> = a
        .runs
        .iter()
        .filter_map(|ra| {
            let rb = b.runs.iter().find(|rb| rb.replicate == ra.replicate)?;
            Some((aps(ra), aps(rb)))
        })
        .collect();
    let Some((first, _)) = pairs.first() else {
        return Vec::new();
    };
    let common: Vec<&(String, String)> = first
        .keys()
        .filter(|k| {
            pairs
                .iter()
                .all(|(x, y)| x.contains_key(*k) && y.contains_key(*k))
        })
        .collect();
    pairs
        .iter()
        .map(|(x, y)| common.iter().map(|k| x[*k] - y[*k]).collect())
        .collect()
}
