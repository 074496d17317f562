//! Privacy loss distributions (PLD) for the Gaussian mechanism, with or without Poisson
//! subsampling: the tightest (ε, δ) accounting for Gaussian noise.
//!
//! A mechanism's privacy curve δ(ε) (the hockey-stick divergence) is convex and
//! decreasing in x = e^ε. It is discretised by *connecting the dots* (Doroshenko, Ghazi,
//! Kamath, Kumar and Manurangsi, PETS 2022): sampled at ε = i·h on a grid of step h and
//! joined by chords, which lie above a convex curve, so the discrete PLD it defines is
//! pessimistic (never understates δ, hence ε) and tight at the grid points. Its losses are
//! multiples of h, so composition (by FFT convolution) stays on the grid; tails that the
//! grid does not keep are moved pessimistically (up to the lowest kept loss, or to an
//! infinite loss that counts fully into δ). Both directions of add/remove adjacency are
//! composed and the larger ε is reported.

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

use crate::error::DpError;

/// Grid step of the privacy loss (the same default as Google's `dp_accounting`).
pub const DEFAULT_STEP: f64 = 1e-4;
/// Largest single-round privacy loss the grid covers (e^loss stays finite).
const MAX_LOSS: f64 = 300.0;
/// Probability mass below which a tail is folded pessimistically.
const TAIL: f64 = 1e-20;

/// A discrete privacy loss distribution: mass at losses `(offset + i)·step`, and the
/// mass of an infinite loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Pld {
    step: f64,
    offset: i64,
    mass: Vec<f64>,
    infinite: f64,
}

/// Upper tail of the standard normal, accurate in relative terms far into the tail.
fn phi_c(x: f64) -> f64 {
    0.5 * libm::erfc(x / std::f64::consts::SQRT_2)
}

/// The privacy curve of one Poisson-subsampled Gaussian (sensitivity 1, noise σ,
/// sampling probability q), for one direction of adjacency.
#[derive(Clone, Copy, Debug)]
struct Curve {
    sigma: f64,
    q: f64,
    /// `remove`: P = (1−q)N(0,σ²) + qN(1,σ²) against Q = N(0,σ²); otherwise the reverse.
    remove: bool,
}

impl Curve {
    /// The x at which the loss of P against Q, log(1 − q + q·e^{(2x−1)/(2σ²)}), equals `l`
    /// (`None` where it never does: l ≤ log(1 − q)).
    fn point(&self, l: f64) -> Option<f64> {
        let s2 = self.sigma * self.sigma;
        let inner = (l.exp_m1() + self.q) / self.q;
        (inner > 0.0).then(|| s2 * inner.ln() + 0.5)
    }

    fn delta(&self, eps: f64) -> f64 {
        let (s, q) = (self.sigma, self.q);
        let d = if self.remove {
            // δ = P(L > ε) − e^ε Q(L > ε), L increasing in x.
            match self.point(eps) {
                None => -eps.exp_m1(),
                Some(x) => {
                    let p = (1.0 - q) * phi_c(x / s) + q * phi_c((x - 1.0) / s);
                    p - eps.exp() * phi_c(x / s)
                }
            }
        } else {
            // The reverse pair: the loss is −L, above ε where L < −ε.
            match self.point(-eps) {
                None => 0.0,
                Some(x) => {
                    let qx = phi_c(-x / s);
                    let px = (1.0 - q) * phi_c(-x / s) + q * phi_c((1.0 - x) / s);
                    qx - eps.exp() * px
                }
            }
        };
        d.clamp(0.0, 1.0)
    }
}

impl Pld {
    /// One Poisson-subsampled Gaussian mechanism (noise multiplier `sigma` for
    /// sensitivity 1, sampling probability `q` in (0, 1]), one direction of adjacency.
    fn connect_the_dots(curve: Curve, step: f64) -> Result<Self, DpError> {
        // The grid spans the losses that matter: beyond it the curve is below TAIL.
        let (lo, hi) = loss_range(&curve, step);
        // e^loss must stay finite (and the grid of a sane size).
        if (hi as f64 * step) > MAX_LOSS || (lo as f64 * step) < -MAX_LOSS {
            return Err(DpError::Infeasible(format!(
                "noise multiplier {} is too small for the PLD accountant (single-round \
                 losses beyond ±{MAX_LOSS}); use the rdp accountant",
                curve.sigma
            )));
        }
        let n = (hi - lo + 1) as usize;
        let xs: Vec<f64> = (0..n)
            .map(|i| ((lo + i as i64) as f64 * step).exp())
            .collect();
        let deltas: Vec<f64> = (0..n)
            .map(|i| curve.delta((lo + i as i64) as f64 * step))
            .collect();
        // Slopes in x = e^ε: from (0, 1) to the first dot, between dots, flat after the last.
        let mut mass = vec![0.0; n];
        let mut left = -(1.0 - deltas[0]) / xs[0];
        for i in 0..n {
            let right = if i + 1 < n {
                (deltas[i + 1] - deltas[i]) / (xs[i + 1] - xs[i])
            } else {
                0.0
            };
            mass[i] = (xs[i] * (right - left)).max(0.0);
            left = right;
        }
        Ok(Self {
            step,
            offset: lo,
            mass,
            infinite: deltas[n - 1],
        })
    }

    /// The PLDs of both directions of one subsampled Gaussian mechanism.
    pub fn gaussian(sigma: f64, q: f64, step: f64) -> Result<[Self; 2], DpError> {
        check(sigma, q, step)?;
        let remove = Self::connect_the_dots(
            Curve {
                sigma,
                q,
                remove: true,
            },
            step,
        )?;
        let add = Self::connect_the_dots(
            Curve {
                sigma,
                q,
                remove: false,
            },
            step,
        )?;
        Ok([remove, add])
    }

    /// log Σ m_i e^{λ l_i} over the finite losses (log-sum-exp).
    fn log_mgf(&self, lambda: f64) -> f64 {
        let terms = self
            .mass
            .iter()
            .enumerate()
            .filter(|(_, m)| **m > 0.0)
            .map(|(i, m)| m.ln() + lambda * (self.offset + i as i64) as f64 * self.step);
        let max = terms.clone().fold(f64::NEG_INFINITY, f64::max);
        max + terms.map(|t| (t - max).exp()).sum::<f64>().ln()
    }

    /// Grid indices outside which `times` compositions hold less than TAIL mass on
    /// each side (Chernoff: P(S ≥ u) ≤ exp(T·log M(λ) − λu), likewise below).
    fn composed_range(&self, times: u64) -> (i64, i64) {
        let t = times as f64;
        let lambdas = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0];
        let upper = lambdas
            .iter()
            .map(|&l| (t * self.log_mgf(l) - TAIL.ln()) / l)
            .fold(f64::INFINITY, f64::min);
        let lower = lambdas
            .iter()
            .map(|&l| (TAIL.ln() - t * self.log_mgf(-l)) / l)
            .fold(f64::NEG_INFINITY, f64::max);
        let first = self.offset * times as i64;
        let last = (self.offset + self.mass.len() as i64 - 1) * times as i64;
        let lo = ((lower / self.step).floor() as i64).max(first);
        let hi = ((upper / self.step).ceil() as i64).min(last);
        (lo, hi.max(lo))
    }

    /// This PLD composed with itself `times` times, in one FFT: the transform raised to
    /// the power `times` on a window that Chernoff bounds show holds all but 2·TAIL of
    /// the mass; that mass is counted as an infinite loss (pessimistic).
    pub fn self_compose(&self, times: u64) -> Self {
        if times <= 1 {
            return self.clone();
        }
        let (lo, hi) = self.composed_range(times);
        let size = ((hi - lo + 1) as usize).next_power_of_two();
        let n = size as i64;
        let mut planner = FftPlanner::<f64>::new();
        let (fwd, inv) = (
            planner.plan_fft_forward(size),
            planner.plan_fft_inverse(size),
        );
        // Index i (loss offset + i) goes to slot (offset + i) mod size; sums then land
        // at their own index mod size, read back inside [lo, lo + size).
        let mut buf = vec![Complex::new(0.0, 0.0); size];
        for (i, &m) in self.mass.iter().enumerate() {
            let slot = (self.offset + i as i64).rem_euclid(n) as usize;
            buf[slot] += Complex::new(m, 0.0);
        }
        fwd.process(&mut buf);
        for z in buf.iter_mut() {
            *z = if z.norm() == 0.0 {
                Complex::new(0.0, 0.0)
            } else {
                (z.ln() * times as f64).exp()
            };
        }
        inv.process(&mut buf);
        let mass: Vec<f64> = (0..size)
            .map(|j| {
                let slot = (lo + j as i64).rem_euclid(n) as usize;
                (buf[slot].re / size as f64).max(0.0)
            })
            .collect();
        let finite = (1.0 - self.infinite).powf(times as f64);
        Self {
            step: self.step,
            offset: lo,
            mass,
            infinite: (1.0 - finite + 2.0 * TAIL).min(1.0),
        }
    }

    /// δ(ε) = p(∞) + Σ_{l > ε} p(l)(1 − e^{ε − l}).
    pub fn delta(&self, eps: f64) -> f64 {
        let mut d = self.infinite;
        for (i, &p) in self.mass.iter().enumerate().rev() {
            let l = (self.offset + i as i64) as f64 * self.step;
            if l <= eps {
                break;
            }
            d += p * -(eps - l).exp_m1();
        }
        d
    }

    /// The least ε ≥ 0 with δ(ε) ≤ `delta`. Between grid losses l_{k−1} ≤ ε < l_k,
    /// δ(ε) = p(∞) + A_k − e^ε·B_k with A_k = Σ_{j≥k} p_j and B_k = Σ_{j≥k} p_j e^{−l_j},
    /// so one pass from the top finds the interval and solves for ε in it.
    pub fn epsilon(&self, delta: f64) -> Result<f64, DpError> {
        if !(delta > 0.0 && delta < 1.0) {
            return Err(DpError::Infeasible(format!(
                "δ = {delta} must be in (0, 1)"
            )));
        }
        if self.infinite > delta {
            return Err(DpError::Infeasible(format!(
                "δ = {delta} is below the probability {:.3e} of an unbounded loss",
                self.infinite
            )));
        }
        let loss = |i: usize| (self.offset + i as i64) as f64 * self.step;
        let (mut a, mut b) = (0.0, 0.0);
        for k in (0..self.mass.len()).rev() {
            a += self.mass[k];
            b += self.mass[k] * (-loss(k)).exp();
            // On [l_{k−1}, l_k): δ(ε) = p∞ + a − e^ε·b, decreasing in ε.
            let below = if k == 0 {
                f64::NEG_INFINITY
            } else {
                loss(k - 1)
            };
            let at = |e: f64| self.infinite + a - e.exp() * b;
            if at(below.max(0.0)) > delta {
                // δ crosses inside [max(l_{k−1}, 0), l_k].
                let eps = ((self.infinite + a - delta) / b).ln();
                return Ok(eps.clamp(below.max(0.0), loss(k)));
            }
            if below < 0.0 {
                return Ok(0.0);
            }
        }
        Ok(0.0)
    }
}

/// Refuses a noise multiplier, sampling rate or grid step no mechanism has.
fn check(sigma: f64, q: f64, step: f64) -> Result<(), DpError> {
    if !(sigma > 0.0 && sigma.is_finite()) {
        return Err(DpError::Infeasible(format!(
            "noise multiplier {sigma} must be > 0"
        )));
    }
    if !(q > 0.0 && q <= 1.0) {
        return Err(DpError::Infeasible(format!(
            "sampling rate {q} must be in (0, 1]"
        )));
    }
    if !(step > 0.0 && step <= 0.1) {
        return Err(DpError::Infeasible(format!(
            "grid step {step} must be in (0, 0.1]"
        )));
    }
    Ok(())
}

/// Grid indices [lo, hi] of a direction's dots. Any range is valid (the chord from
/// (0, 1) and the flat tail lie above the convex curve); this one loses less than TAIL:
/// above `hi` δ(ε) < TAIL, below `lo` the curve is the line 1 − e^ε to within TAIL.
fn loss_range(curve: &Curve, step: f64) -> (i64, i64) {
    let mut hi = step;
    while curve.delta(hi) >= TAIL && hi < 1e4 {
        hi *= 2.0;
    }
    let mut lo = -step;
    while lo > -1e4 && (curve.delta(lo) + lo.exp_m1()).abs() >= TAIL {
        lo *= 2.0;
    }
    ((lo / step).floor() as i64, (hi / step).ceil() as i64)
}

/// ε at `delta` of μ-Gaussian DP: the exact curve δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)
/// of any composition of Gaussian mechanisms without subsampling (Dong, Roth and Su).
pub fn gdp_epsilon(mu: f64, delta: f64) -> Result<f64, DpError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(DpError::Infeasible(format!(
            "δ = {delta} must be in (0, 1)"
        )));
    }
    let curve = |e: f64| phi_c(e / mu - mu / 2.0) - e.exp() * phi_c(e / mu + mu / 2.0);
    if curve(0.0) <= delta {
        return Ok(0.0);
    }
    let mut hi = 1.0;
    while curve(hi) > delta {
        hi *= 2.0;
        if hi > 1e9 {
            return Err(DpError::Infeasible("ε beyond 1e9".into()));
        }
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if curve(mid) <= delta {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// ε at `delta` of `rounds` compositions of a Poisson-subsampled Gaussian mechanism
/// (noise multiplier `sigma`, sampling probability `q`), the larger of both directions.
pub fn gaussian_epsilon(
    sigma: f64,
    q: f64,
    rounds: u64,
    delta: f64,
    step: f64,
) -> Result<f64, DpError> {
    if rounds == 0 {
        return Err(DpError::Infeasible("rounds must be at least 1".into()));
    }
    check(sigma, q, step)?;
    if q == 1.0 {
        // Without subsampling the composition is exactly μ-GDP: no grid needed.
        return gdp_epsilon((rounds as f64).sqrt() / sigma, delta);
    }
    let [remove, add] = Pld::gaussian(sigma, q, step)?;
    let a = remove.self_compose(rounds).epsilon(delta)?;
    let b = add.self_compose(rounds).epsilon(delta)?;
    Ok(a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without subsampling the composition is exactly Gaussian DP with μ = √T/σ, whose
    /// curve is δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2): the discretised, composed PLD
    /// must not be below it, and (grid 1e-4) within 0.5% of it.
    #[test]
    fn unsubsampled_gaussian_matches_the_exact_gdp_curve() {
        for (sigma, rounds, delta) in [(10.0, 100, 1e-5), (2.0, 20, 1e-6), (5.0, 1, 1e-5)] {
            let mu = (rounds as f64).sqrt() / sigma;
            let exact_delta =
                |e: f64| phi_c(e / mu - mu / 2.0) - e.exp() * phi_c(e / mu + mu / 2.0);
            let (mut lo, mut hi) = (0.0, 100.0);
            for _ in 0..200 {
                let mid = 0.5 * (lo + hi);
                if exact_delta(mid) <= delta {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            let [remove, _] = Pld::gaussian(sigma, 1.0, DEFAULT_STEP).unwrap();
            let ours = remove.self_compose(rounds).epsilon(delta).unwrap();
            assert!(ours >= hi * (1.0 - 1e-9), "{ours} < exact {hi}");
            assert!(ours <= hi * 1.005, "{ours} vs exact {hi}");
        }
    }

    #[test]
    fn impossible_parameters_are_refused() {
        assert!(gaussian_epsilon(0.0, 1.0, 1, 1e-5, DEFAULT_STEP).is_err());
        assert!(gaussian_epsilon(1.0, 0.0, 1, 1e-5, DEFAULT_STEP).is_err());
        assert!(gaussian_epsilon(1.0, 1.5, 1, 1e-5, DEFAULT_STEP).is_err());
        assert!(gaussian_epsilon(1.0, 1.0, 0, 1e-5, DEFAULT_STEP).is_err());
        assert!(gaussian_epsilon(1.0, 1.0, 1, 0.0, DEFAULT_STEP).is_err());
        // Too little noise for the grid: refused, never NaN.
        let tiny = gaussian_epsilon(0.01, 0.5, 10, 1e-5, DEFAULT_STEP).unwrap_err();
        assert!(tiny.to_string().contains("rdp"), "{tiny}");
    }
}
