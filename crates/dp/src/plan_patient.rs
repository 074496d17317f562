//! Planning the patient unit: secret Poisson sampling of patients, per-patient clipping,
//! distributed discrete Gaussian noise, accounted with amplification by subsampling.
//!
//! The per-round ρ* is the largest whose T-fold composition under Poisson sampling at
//! rate q stays within (ε, δ) ([`crate::subsampled`]); it does not depend on the grid.
//! For a grid step γ the sensitivity to one patient is c/γ + √m
//! ([`crate::codec::patient_sensitivity`]) and the per-site σ is the least that keeps
//! the sum of t − c shares within ρ*. The wrap-around bound counts every enrolled
//! patient as sampled (the worst case: K·c/γ of signal), n roundings and n noise shares:
//! P(wrap) ≤ 2·exp(−(2^(b−1) − n)² / (2((K·c/γ)²/m + n·σ²))) per coordinate; the plan takes
//! the finest grid whose union bound over m coordinates is at most [`WRAP_TARGET`].

use crate::accounting::ddg_rho;
use crate::codec::{SiteNoise, patient_sensitivity};
use crate::error::DpError;
use crate::plan::{DpConfig, DpPlan, RoundShape, WRAP_TARGET, bump};
use crate::sampler::Ratio;
use crate::subsampled::epsilon_repeated;

/// The largest per-round ρ whose composition over the run stays within the target.
pub fn rho_per_round(config: &DpConfig) -> Result<f64, DpError> {
    let eps = |rho: f64| epsilon_repeated(rho, config.sampling_rate, config.rounds, config.delta);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while eps(hi) <= config.epsilon {
        hi *= 2.0;
        if hi > 1e12 {
            return Err(DpError::Infeasible(format!(
                "dp.epsilon = {} is reached without noise; use a smaller epsilon",
                config.epsilon
            )));
        }
    }
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if eps(mid) <= config.epsilon {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if lo <= 0.0 {
        return Err(DpError::Infeasible(format!(
            "dp.epsilon = {} at δ = {} cannot be met by any noise over {} rounds",
            config.epsilon, config.delta, config.rounds
        )));
    }
    Ok(lo)
}

struct Candidate {
    plan: DpPlan,
    variance: f64,
}

fn candidate(
    config: &DpConfig,
    shape: RoundShape,
    rho: f64,
    m: usize,
    gamma: f64,
) -> Result<Candidate, DpError> {
    let scaled = config.l2_clip / gamma;
    let sens = patient_sensitivity(scaled, m);
    let t = shape.guaranteed;
    let guess = (sens.l2 / (2.0 * rho * t as f64).sqrt()).max(0.5);
    let sigma = bump(Ratio::at_least(guess)?, |s| {
        Ok(ddg_rho(sens, s, t, m)? <= rho)
    })?;
    let s = sigma.to_f64();
    let actual = ddg_rho(sens, s, t, m)?;
    let n = shape.sites as f64;
    let signal = (config.patients as f64 * scaled).powi(2) / m as f64;
    let variance = signal + n * s * s;
    let margin = (2f64.powi(i32::from(shape.bits) - 1) - n).max(0.0);
    let per_coordinate = (2.0 * (-(margin * margin) / (2.0 * variance)).exp()).min(1.0);
    Ok(Candidate {
        plan: DpPlan {
            mechanism: config.mechanism,
            gamma,
            padded_dim: m,
            sensitivity: sens,
            site_noise: SiteNoise::DiscreteGaussian { sigma },
            central_sigma: None,
            noise: s,
            guaranteed: t,
            rho_per_round: rho,
            rho: actual,
            wrap_probability: (per_coordinate * m as f64).min(1.0),
            noise_std: gamma * (t as f64).sqrt() * s,
            sampling_rate: config.sampling_rate,
        },
        variance,
    })
}

/// Plans one round of the patient unit (`config` validated by the caller).
pub(crate) fn plan(config: &DpConfig, shape: RoundShape, m: usize) -> Result<DpPlan, DpError> {
    let rho = rho_per_round(config)?;
    let at = |gamma: f64| candidate(config, shape, rho, m, gamma);
    // Coarsest grid: the clip at 2^8 grid units (past that, rounding dominates).
    let coarsest = config.l2_clip / 256.0;
    let best = at(coarsest)?;
    if best.plan.wrap_probability > WRAP_TARGET {
        let per_coordinate = WRAP_TARGET / m as f64;
        let needed =
            shape.sites as f64 + (2.0 * best.variance * (2.0 / per_coordinate).ln()).sqrt();
        let bits = needed.log2().ceil() as u32 + 1;
        return Err(DpError::Infeasible(format!(
            "the noisy sum of {} patients needs at least {bits} bits per coordinate to keep the \
             chance of any wrap-around below {WRAP_TARGET:e}, but bits = {}; raise bits to {bits}, \
             or raise dp.epsilon or dp.sampling_rate",
            config.patients, shape.bits
        )));
    }
    let (mut lo, mut hi) = ((coarsest * 1e-9).ln(), coarsest.ln());
    let mut chosen = best.plan;
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        match at(mid.exp()) {
            Ok(c) if c.plan.wrap_probability <= WRAP_TARGET => {
                chosen = c.plan;
                hi = mid;
            }
            _ => lo = mid,
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Mechanism, PrivacyUnit};

    fn config(epsilon: f64, q: f64) -> DpConfig {
        DpConfig {
            mechanism: Mechanism::Ddg,
            epsilon,
            delta: 1e-5,
            rounds: 30,
            l2_clip: 0.1,
            unit: PrivacyUnit::Patient,
            sampling_rate: q,
            patients: 60,
        }
    }

    const SHAPE: RoundShape = RoundShape {
        sites: 3,
        guaranteed: 2,
        bits: 32,
        dim: 30_000,
    };

    #[test]
    fn the_plan_spends_the_budget_and_no_more() {
        let cfg = config(8.0, 0.5);
        let p = crate::plan(&cfg, SHAPE).unwrap();
        let eps = epsilon_repeated(p.rho, 0.5, 30, 1e-5);
        assert!(eps <= 8.0 && eps > 7.8, "{eps}");
        assert!(p.wrap_probability <= WRAP_TARGET);
        // The sensitivity overhead of rounding once (√m) is small at the chosen grid.
        assert!(p.sensitivity.l2 * p.gamma < 1.02 * cfg.l2_clip, "{p:?}");
    }

    #[test]
    fn sampling_fewer_patients_needs_less_noise_per_patient() {
        let all = crate::plan(&config(8.0, 1.0), SHAPE).unwrap();
        let half = crate::plan(&config(8.0, 0.2), SHAPE).unwrap();
        let tenth = crate::plan(&config(8.0, 0.05), SHAPE).unwrap();
        let per_clip = |p: &DpPlan| p.noise_std / 0.1;
        assert!(per_clip(&tenth) < per_clip(&half) && per_clip(&half) < per_clip(&all));
    }

    #[test]
    fn bad_patient_settings_name_their_key() {
        for (cfg, key) in [
            (
                DpConfig {
                    patients: 0,
                    ..config(8.0, 0.5)
                },
                "dp.patients",
            ),
            (config(8.0, 1.5), "dp.sampling_rate"),
            (
                DpConfig {
                    mechanism: Mechanism::Skellam,
                    ..config(8.0, 0.5)
                },
                "dp.mechanism",
            ),
            (
                DpConfig {
                    unit: PrivacyUnit::Site,
                    ..config(8.0, 0.5)
                },
                "dp.sampling_rate",
            ),
        ] {
            let err = crate::plan(&cfg, SHAPE).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
