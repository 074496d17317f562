//! Zero-concentrated DP accounting with OpenDP, and the privacy ledger.
//!
//! Per round: the Gaussian part of every mechanism comes from OpenDP's privacy map of
//! `make_gaussian` (ρ = Δ₂²/(2s²)). The distributed discrete Gaussian adds the
//! correction for a sum of discrete Gaussians (Kairouz, Liu, Steinke 2021, Prop. 14):
//! with σ ≥ ½ per site, n summands, τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ²·k/(k+1)) and m
//! coordinates, the sum is ρ-zCDP with
//! ρ = min{ ½(Δ₂²/(nσ²) + 2Δ₁τ/(√n·σ) + τ²m), ½(Δ₂/(√n·σ) + τ√m)² }.
//! Skellam noise with total parameter μ (variance 2μ) satisfies α-RDP
//! ε(α) ≤ αΔ₂²/(4μ) + ((2α)Δ₂² + 6Δ₁)/(16μ²) (Agarwal, Kairouz, Liu 2021); since α ≥ 1
//! this is ρ-zCDP with ρ = Δ₂²/(4μ) + Δ₂²/(8μ²) + 3Δ₁/(8μ²).
//!
//! Over rounds, the per-round measurements are composed with OpenDP's
//! `make_composition` and converted to (ε, δ) with `make_zCDP_to_approxDP`. Dropped
//! sites add no noise, so callers pass the number of contributors the secure
//! aggregation guarantees (its threshold), not the number invited.

use opendp::combinators::{make_composition, make_zCDP_to_approxDP};
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;
use serde::{Deserialize, Serialize};

use crate::codec::Sensitivity;
use crate::error::DpError;

type GaussianMeasurement = opendp::core::Measurement<
    VectorDomain<AtomDomain<f64>>,
    L2Distance<f64>,
    ZeroConcentratedDivergence,
    Vec<f64>,
>;

fn gaussian(scale: f64) -> Result<GaussianMeasurement, DpError> {
    Ok(make_gaussian(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        L2Distance::default(),
        scale,
        None,
    )?)
}

/// ρ of the Gaussian mechanism with L2 sensitivity `l2` and noise scale `scale`,
/// from OpenDP's privacy map.
pub fn gaussian_rho(l2: f64, scale: f64) -> Result<f64, DpError> {
    Ok(gaussian(scale)?.map(&l2)?)
}

/// τ of Prop. 14 for n discrete Gaussians of σ each.
pub fn ddg_tau(sigma: f64, n: usize) -> f64 {
    let s2 = sigma * sigma;
    10.0 * (1..n)
        .map(|k| {
            let k = k as f64;
            (-2.0 * std::f64::consts::PI.powi(2) * s2 * k / (k + 1.0)).exp()
        })
        .sum::<f64>()
}

/// ρ of the sum of `n` sites' discrete Gaussian noise of σ each, in `m` coordinates.
pub fn ddg_rho(sens: Sensitivity, sigma: f64, n: usize, m: usize) -> Result<f64, DpError> {
    if sigma < 0.5 {
        return Err(DpError::BadParameter {
            name: "per-site sigma",
            value: sigma,
            expected: "at least 1/2 (the sum-of-discrete-Gaussians bound needs it)",
        });
    }
    let root_n = (n as f64).sqrt();
    let base = gaussian_rho(sens.l2, root_n * sigma)?;
    let tau = ddg_tau(sigma, n);
    let m = m as f64;
    let with_l1 = base + sens.l1 * tau / (root_n * sigma) + tau * tau * m / 2.0;
    let with_l2 = 0.5 * ((2.0 * base).sqrt() + tau * m.sqrt()).powi(2);
    Ok(with_l1.min(with_l2))
}

/// ρ of symmetric Skellam noise with total parameter `mu` (sum over contributors).
pub fn skellam_rho(sens: Sensitivity, mu: f64) -> f64 {
    let d2 = sens.l2 * sens.l2;
    d2 / (4.0 * mu) + d2 / (8.0 * mu * mu) + 3.0 * sens.l1 / (8.0 * mu * mu)
}

/// ε at `delta` of the composition of rounds with the given ρ values, via OpenDP.
pub fn epsilon(rhos: &[f64], delta: f64) -> Result<f64, DpError> {
    if rhos.is_empty() {
        return Ok(0.0);
    }
    // Each round is represented by a Gaussian measurement whose map at d_in = 1 is its ρ.
    let rounds = rhos
        .iter()
        .map(|&rho| gaussian(1.0 / (2.0 * rho).sqrt()))
        .collect::<Result<Vec<_>, _>>()?;
    let composed = make_zCDP_to_approxDP(make_composition(rounds)?)?;
    Ok(composed.map(&1.0)?.epsilon(delta)?)
}

/// ε at `delta` of rounds given as (ρ, Poisson sampling rate), with the accountant
/// used: OpenDP's zCDP conversion while no round samples, Rényi DP with amplification
/// by subsampling ([`crate::subsampled`]) once one does. Ledgers and auditors both
/// recompute ε with this.
pub fn composed_epsilon(rounds: &[(f64, f64)], delta: f64) -> Result<(f64, &'static str), DpError> {
    if rounds.iter().all(|&(_, q)| q >= 1.0) {
        let rhos: Vec<f64> = rounds.iter().map(|&(rho, _)| rho).collect();
        return Ok((epsilon(&rhos, delta)?, "zcdp"));
    }
    Ok((
        crate::subsampled::epsilon(rounds, delta),
        SUBSAMPLED_ACCOUNTANT,
    ))
}

/// The largest total ρ whose (ε, δ) conversion stays within `target` ε.
pub fn rho_budget(target: f64, delta: f64) -> Result<f64, DpError> {
    let (mut lo, mut hi) = (0.0f64, target.max(1.0));
    loop {
        match epsilon(&[hi], delta) {
            Ok(e) if e <= target => hi *= 2.0,
            Ok(_) => break,
            Err(_) => {
                return Err(DpError::Infeasible(format!(
                    "dp.epsilon = {target}: OpenDP's zCDP conversion overflows for budgets this \
                     large (ρ ≥ {hi:.3e}); such an ε promises no meaningful privacy, so use \
                     dp.mechanism = \"none\" or a smaller epsilon"
                )));
            }
        }
    }
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if epsilon(&[mid], delta)? <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// One round's charge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub round: u64,
    /// Contributors the secure aggregation guarantees (the noise is accounted for these).
    pub guaranteed_contributors: usize,
    /// Noise parameter in grid units: per-site σ (ddg), per-site μ (skellam) or the
    /// coordinator's σ (central).
    pub noise: f64,
    pub rho: f64,
    /// Poisson sampling rate of the privacy unit this round (1: no amplification).
    #[serde(default = "full_rate")]
    pub sampling_rate: f64,
    /// ε at the ledger's δ after this round.
    pub cumulative_epsilon: f64,
}

fn full_rate() -> f64 {
    1.0
}

/// The accountant of rounds with secret Poisson sampling (see [`crate::subsampled`]).
pub const SUBSAMPLED_ACCOUNTANT: &str = "rdp-subsampled";

fn zcdp() -> String {
    "zcdp".into()
}

/// Every charge of a training run, refusing any that would exceed the budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub mechanism: String,
    /// How ε is computed from the entries: zCDP composed and converted by OpenDP (the
    /// tightest bound Tessera has for the sum of discrete Gaussians and for Skellam; see
    /// `query` for PLD, which applies to the continuous Gaussian only).
    #[serde(default = "zcdp")]
    pub accountant: String,
    pub target_epsilon: f64,
    pub delta: f64,
    /// Whether the noise comes from an exact sampler (false for Skellam).
    pub exact_sampler: bool,
    pub entries: Vec<LedgerEntry>,
}

impl Ledger {
    pub fn new(mechanism: &str, target_epsilon: f64, delta: f64, exact_sampler: bool) -> Self {
        Self {
            mechanism: mechanism.into(),
            accountant: zcdp(),
            target_epsilon,
            delta,
            exact_sampler,
            entries: vec![],
        }
    }

    /// ε spent so far.
    pub fn spent(&self) -> f64 {
        self.entries.last().map_or(0.0, |e| e.cumulative_epsilon)
    }

    pub fn total_rho(&self) -> f64 {
        self.entries.iter().map(|e| e.rho).sum()
    }

    /// Records a round, or refuses it when it would take ε past the target.
    pub fn charge(
        &mut self,
        round: u64,
        guaranteed_contributors: usize,
        noise: f64,
        rho: f64,
    ) -> Result<&LedgerEntry, DpError> {
        self.charge_sampled(round, guaranteed_contributors, noise, rho, 1.0)
    }

    /// ε of the entries and one more round, with the accountant that gave it.
    fn epsilon_with(&self, rho: f64, sampling_rate: f64) -> Result<(f64, &'static str), DpError> {
        let mut rounds: Vec<(f64, f64)> = self
            .entries
            .iter()
            .map(|e| (e.rho, e.sampling_rate))
            .collect();
        rounds.push((rho, sampling_rate));
        composed_epsilon(&rounds, self.delta)
    }

    /// [`Self::charge`] for a round that Poisson-samples its privacy units at
    /// `sampling_rate` with secret randomness.
    pub fn charge_sampled(
        &mut self,
        round: u64,
        guaranteed_contributors: usize,
        noise: f64,
        rho: f64,
        sampling_rate: f64,
    ) -> Result<&LedgerEntry, DpError> {
        if !(sampling_rate > 0.0 && sampling_rate <= 1.0) {
            return Err(DpError::BadParameter {
                name: "sampling_rate",
                value: sampling_rate,
                expected: "in (0, 1]",
            });
        }
        let (next, accountant) = self.epsilon_with(rho, sampling_rate)?;
        // A relative slack of 1e-9 absorbs the bisection of the planner.
        if next > self.target_epsilon * (1.0 + 1e-9) {
            return Err(DpError::BudgetExhausted {
                round,
                spent: self.spent(),
                next,
                target: self.target_epsilon,
                delta: self.delta,
            });
        }
        self.accountant = accountant.into();
        self.entries.push(LedgerEntry {
            round,
            guaranteed_contributors,
            noise,
            rho,
            sampling_rate,
            cumulative_epsilon: next,
        });
        Ok(self.entries.last().expect("just pushed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_rho_is_the_closed_form() {
        for (l2, s) in [(1.0, 1.0), (3.0, 10.0), (0.5, 0.2), (100.0, 7.5)] {
            let rho = gaussian_rho(l2, s).unwrap();
            let closed = l2 * l2 / (2.0 * s * s);
            assert!((rho - closed).abs() <= 1e-9 * closed, "{rho} vs {closed}");
        }
    }

    /// Reference values from ../shared/dp-notes.md (sensitivity 1, T rounds).
    #[test]
    fn epsilon_matches_the_reference_conversions() {
        for (sigma, t, want) in [(10.0, 100, 4.728), (5.0, 100, 10.725)] {
            let rho = 1.0 / (2.0 * sigma * sigma);
            let eps = epsilon(&vec![rho; t], 1e-5).unwrap();
            assert!(
                (eps - want).abs() < 0.005 * want,
                "σ {sigma}: {eps} vs {want}"
            );
            // and it sits below the textbook ρ + 2√(ρ ln 1/δ)
            let total = rho * t as f64;
            assert!(eps < total + 2.0 * (total * (1e5f64).ln()).sqrt());
        }
    }

    #[test]
    fn budget_inverts_the_conversion() {
        let rho = rho_budget(4.728, 1e-5).unwrap();
        assert!((rho - 0.5).abs() < 0.005, "{rho}");
        assert!(epsilon(&[rho], 1e-5).unwrap() <= 4.728);
    }

    #[test]
    fn ddg_correction_vanishes_for_large_sigma_and_matters_for_small() {
        let sens = Sensitivity {
            l2: 10.0,
            l1: 100.0,
        };
        let gaussian = gaussian_rho(10.0, (5.0f64).sqrt() * 4.0).unwrap();
        let ddg = ddg_rho(sens, 4.0, 5, 1 << 16).unwrap();
        assert!(ddg >= gaussian && ddg - gaussian < 1e-12 * gaussian.max(1.0));
        let small = ddg_rho(sens, 0.5, 5, 1 << 16).unwrap();
        assert!(small > gaussian_rho(10.0, (5.0f64).sqrt() * 0.5).unwrap() * 1.01);
        assert!(ddg_rho(sens, 0.4, 5, 16).is_err());
        assert_eq!(ddg_tau(3.0, 1), 0.0);
    }

    #[test]
    fn ledger_refuses_a_round_past_the_budget() {
        let rho = 1.0 / 200.0;
        let target = epsilon(&[100.0 * rho], 1e-5).unwrap();
        let mut ledger = Ledger::new("ddg", target, 1e-5, true);
        for r in 1..=99 {
            ledger.charge(r, 3, 10.0, rho).unwrap();
        }
        assert!(ledger.spent() < target);
        // The 100th round lands on the budget, the 101st would exceed it.
        ledger.charge(100, 3, 10.0, rho).unwrap();
        let err = ledger.charge(101, 3, 10.0, rho).unwrap_err();
        assert!(err.to_string().contains("round 101"), "{err}");
        assert_eq!(ledger.entries.len(), 100);
    }
}
