//! Amplification by secret Poisson sampling for mechanisms known only through zCDP.
//!
//! The patient unit samples each patient with probability q every round, with each
//! site's secret randomness, and adds the sum of discrete Gaussian shares. That sum has
//! no privacy-loss-distribution form here; what is known is its ρ-zCDP bound (Kairouz,
//! Liu and Steinke 2021, Prop. 14), i.e. Rényi DP ε(α) = αρ at every order. For a
//! Poisson-subsampled mechanism with a given RDP curve, Zhu and Wang (ICML 2019,
//! Theorem 6, the general upper bound) give at integer α ≥ 2
//!
//! e^{(α−1)ε'(α)} ≤ (1−q)^{α−1}(1 + (α−1)q) + C(α,2)q²(1−q)^{α−2}e^{ε(2)}
//!                  + Σ_{ℓ=3}^{α} C(α,ℓ)q^ℓ(1−q)^{α−ℓ}·3·e^{(ℓ−1)ε(ℓ)}.
//!
//! autodp states the general Poisson bound with e^{ℓ·ε(ℓ+1)} and no factor 3 in the
//! ℓ ≥ 3 terms; each term here is the larger of the two forms, so that an error in
//! transcribing either cannot understate ε. Subsampling never hurts (joint
//! quasi-convexity of Rényi divergence), so the result is also capped at αρ. Rounds are
//! composed by adding RDP and converted with Canonne, Kamath and Steinke's bound.
//! For the Gaussian (ρ = 1/(2z²)) the bound lies above the exact sampled-Gaussian RDP
//! (tested), as an upper bound must.

/// Orders the accountant minimises over: every integer to 64, then sparser to 256.
fn orders() -> impl Iterator<Item = u32> {
    (2..=64).chain((72..=128).step_by(8)).chain([160, 192, 256])
}

/// (ε, δ) from RDP at order α (Canonne, Kamath and Steinke 2020, Prop. 12).
pub(crate) fn rdp_to_epsilon(alpha: f64, rdp: f64, delta: f64) -> f64 {
    rdp + ((alpha - 1.0) / alpha).ln() - (delta.ln() + alpha.ln()) / (alpha - 1.0)
}

fn log_sum_exp(terms: &[f64]) -> f64 {
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}

/// RDP at integer order `alpha` ≥ 2 of one round of a ρ-zCDP mechanism applied to a
/// Poisson sample of rate `q`.
pub fn subsampled_rdp(rho: f64, q: f64, alpha: u32) -> f64 {
    let a = f64::from(alpha);
    let plain = a * rho;
    if q >= 1.0 {
        return plain;
    }
    let (lq, l1q) = (q.ln(), (-q).ln_1p());
    let eps = |order: f64| order * rho;
    let mut terms = Vec::with_capacity(alpha as usize);
    terms.push((a - 1.0) * l1q + ((a - 1.0) * q).ln_1p());
    let mut log_binom = a.ln(); // C(α, 1)
    for l in 2..=alpha {
        let lf = f64::from(l);
        log_binom += ((a - lf + 1.0) / lf).ln();
        let moment = if l == 2 {
            eps(2.0)
        } else {
            (3f64.ln() + (lf - 1.0) * eps(lf)).max(lf * eps(lf + 1.0))
        };
        terms.push(log_binom + lf * lq + (a - lf) * l1q + moment);
    }
    (log_sum_exp(&terms) / (a - 1.0)).min(plain)
}

/// ε at `delta` of rounds composed, each given as (ρ, sampling rate).
pub fn epsilon(rounds: &[(f64, f64)], delta: f64) -> f64 {
    if rounds.is_empty() {
        return 0.0;
    }
    orders()
        .map(|alpha| {
            let rdp: f64 = rounds
                .iter()
                .map(|&(rho, q)| subsampled_rdp(rho, q, alpha))
                .sum();
            rdp_to_epsilon(f64::from(alpha), rdp, delta)
        })
        .fold(f64::INFINITY, f64::min)
        .max(0.0)
}

/// ε of `rounds` identical rounds (ρ, q): the planner's fast path.
pub fn epsilon_repeated(rho: f64, q: f64, rounds: u64, delta: f64) -> f64 {
    orders()
        .map(|alpha| {
            let rdp = rounds as f64 * subsampled_rdp(rho, q, alpha);
            rdp_to_epsilon(f64::from(alpha), rdp, delta)
        })
        .fold(f64::INFINITY, f64::min)
        .max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_lies_above_the_exact_sampled_gaussian_and_below_no_sampling() {
        for z in [0.7, 1.0, 2.0, 5.0] {
            let rho = 1.0 / (2.0 * z * z);
            for q in [0.001, 0.01, 0.1, 0.5, 0.9] {
                for alpha in [2, 3, 5, 10, 32, 100] {
                    let bound = subsampled_rdp(rho, q, alpha);
                    // Exact RDP of the sampled Gaussian (Mironov, Talwar, Zhang 2019).
                    let exact = crate::query::subsampled_gaussian_rdp(z, q, alpha);
                    assert!(
                        bound >= exact * (1.0 - 1e-8),
                        "z {z} q {q} α {alpha}: {bound} < {exact}"
                    );
                    assert!(bound <= f64::from(alpha) * rho * (1.0 + 1e-12));
                }
            }
        }
    }

    #[test]
    fn sampling_amplifies_and_rate_one_is_plain_zcdp() {
        let rho = 0.02;
        let full = epsilon_repeated(rho, 1.0, 100, 1e-5);
        let half = epsilon_repeated(rho, 0.5, 100, 1e-5);
        let tenth = epsilon_repeated(rho, 0.1, 100, 1e-5);
        let hundredth = epsilon_repeated(rho, 0.01, 100, 1e-5);
        // The general bound's factor 3 leaves little amplification at large rates (here
        // none at q = 1/2, where the cap αρ binds); small rates amplify strongly.
        assert!(
            hundredth < tenth && tenth < half && half <= full,
            "{tenth} {half} {full}"
        );
        assert!(tenth < 0.5 * full, "{tenth} {full}");
        // q = 1: RDP αρ·T converted; close to (and above) OpenDP's zCDP conversion.
        let opendp = crate::accounting::epsilon(&[rho * 100.0], 1e-5).unwrap();
        assert!(
            full >= opendp * 0.999 && full < opendp * 1.05,
            "{full} {opendp}"
        );
        // Composition of the same rounds one by one agrees with the fast path.
        let each = epsilon(&vec![(rho, 0.1); 100], 1e-5);
        assert!((each - tenth).abs() < 1e-9 * tenth, "{each} {tenth}");
    }
}
