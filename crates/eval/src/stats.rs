//! Paired comparisons of two arms evaluated on the same patients, over several training
//! seeds: a two-level bootstrap of the mean difference (seeds and patients resampled,
//! so that both training-run and patient variation are in the interval), Wilcoxon's
//! signed-rank test on the per-patient differences averaged over seeds, Holm's
//! correction for several claims, and an equivalence test (two one-sided tests, TOST)
//! with a stated margin.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The mean of `a − b` over (seed, patient) pairs with its bootstrap distribution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedDifference {
    pub mean: f64,
    /// 95% percentile interval.
    pub low: f64,
    pub high: f64,
    pub seeds: usize,
    pub patients: usize,
    /// Two-sided bootstrap p-value of "no difference".
    pub p_value: f64,
    /// Sorted bootstrap means (not serialised: large).
    #[serde(skip)]
    resampled: Vec<f64>,
}

impl PairedDifference {
    /// Two one-sided tests of equivalence within ±`margin`: the larger of the bootstrap
    /// p-values of "difference ≤ −margin" and "difference ≥ +margin". Below α the arms
    /// are equivalent at level α (the 1 − 2α interval lies inside the margin).
    pub fn equivalence_p(&self, margin: f64) -> f64 {
        let below = self.resampled.iter().filter(|&&m| m <= -margin).count();
        let above = self.resampled.iter().filter(|&&m| m >= margin).count();
        let b = self.resampled.len() as f64;
        ((1 + below.max(above)) as f64 / (b + 1.0)).min(1.0)
    }
}

/// Two-level bootstrap of the mean of `diffs[seed][patient]` (every row the same
/// patients, in the same order): each of `resamples` draws picks seeds, then patients,
/// with replacement, from a ChaCha20 stream seeded with `seed`. `None` without data or
/// with rows of different lengths.
pub fn paired_difference(
    diffs: &[Vec<f64>],
    resamples: usize,
    seed: u64,
) -> Option<PairedDifference> {
    let (s, p) = (diffs.len(), diffs.first()?.len());
    if p == 0 || resamples == 0 || diffs.iter().any(|r| r.len() != p) {
        return None;
    }
    let mean = diffs.iter().flatten().sum::<f64>() / (s * p) as f64;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let mut resampled: Vec<f64> = (0..resamples)
        .map(|_| {
            let seeds: Vec<usize> = (0..s).map(|_| pick(s)).collect();
            let mut total = 0.0;
            for &k in &seeds {
                for _ in 0..p {
                    total += diffs[k][pick(p)];
                }
            }
            total / (s * p) as f64
        })
        .collect();
    resampled.sort_by(f64::total_cmp);
    let quantile = |q: f64| resampled[((q * resamples as f64).floor() as usize).min(resamples - 1)];
    let b = resamples as f64;
    let at_most = resampled.iter().filter(|&&m| m <= 0.0).count();
    let at_least = resampled.iter().filter(|&&m| m >= 0.0).count();
    let p_value = (2.0 * (1 + at_most.min(at_least)) as f64 / (b + 1.0)).min(1.0);
    Some(PairedDifference {
        mean,
        low: quantile(0.025),
        high: quantile(0.975),
        seeds: s,
        patients: p,
        p_value,
        resampled,
    })
}

/// Wilcoxon's signed-rank test of `diffs` (zeros dropped, tied magnitudes given their
/// mean rank).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedRank {
    /// Non-zero differences used.
    pub n: usize,
    /// Sum of the ranks of the positive differences.
    pub w_plus: f64,
    /// Two-sided p-value: exact without ties for n ≤ 50, else the normal approximation
    /// with tie and continuity corrections.
    pub p_value: f64,
    pub exact: bool,
}

/// Wilcoxon's signed-rank test; `None` when every difference is zero.
pub fn wilcoxon_signed_rank(diffs: &[f64]) -> Option<SignedRank> {
    let mut nonzero: Vec<f64> = diffs.iter().copied().filter(|d| *d != 0.0).collect();
    let n = nonzero.len();
    if n == 0 || nonzero.iter().any(|d| !d.is_finite()) {
        return None;
    }
    nonzero.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    let mut ranks = vec![0.0; n];
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && nonzero[j + 1].abs() == nonzero[i].abs() {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        for r in &mut ranks[i..=j] {
            *r = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    let w_plus: f64 = nonzero
        .iter()
        .zip(&ranks)
        .filter(|(d, _)| **d > 0.0)
        .map(|(_, r)| r)
        .sum();
    let total = (n * (n + 1)) as f64 / 2.0;
    if tie_term == 0.0 && n <= 50 {
        let p_value = exact_two_sided(n, w_plus.min(total - w_plus) as usize);
        return Some(SignedRank {
            n,
            w_plus,
            p_value,
            exact: true,
        });
    }
    let mean = total / 2.0;
    let var = (n * (n + 1) * (2 * n + 1)) as f64 / 24.0 - tie_term / 48.0;
    let z = ((w_plus - mean).abs() - 0.5).max(0.0) / var.sqrt();
    Some(SignedRank {
        n,
        w_plus,
        p_value: (2.0 * normal_upper_tail(z)).min(1.0),
        exact: false,
    })
}

/// P(W ≤ w) · 2 under the null, W the signed-rank sum of n untied ranks.
fn exact_two_sided(n: usize, w: usize) -> f64 {
    let max = n * (n + 1) / 2;
    let mut counts = vec![0f64; max + 1];
    counts[0] = 1.0;
    for k in 1..=n {
        for s in (k..=max).rev() {
            counts[s] += counts[s - k];
        }
    }
    let all = 2f64.powi(n as i32);
    let tail: f64 = counts[..=w].iter().sum();
    (2.0 * tail / all).min(1.0)
}

/// P(Z > z) for a standard normal Z (Abramowitz–Stegun 7.1.26 erfc, |error| < 1.5e-7).
fn normal_upper_tail(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-x * x).exp();
    if z >= 0.0 {
        erfc / 2.0
    } else {
        1.0 - erfc / 2.0
    }
}

/// Holm's step-down adjustment of `p` (same order as given).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holm_matches_a_hand_computed_example() {
        // Sorted 0.01, 0.03, 0.04 → 3·0.01, 2·0.03, max(0.06, 1·0.04).
        let adjusted = holm(&[0.01, 0.04, 0.03]);
        let want = [0.03, 0.06, 0.06];
        for (a, w) in adjusted.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adjusted:?}");
        }
        assert_eq!(holm(&[0.6, 0.9]), vec![1.0, 1.0]);
    }

    #[test]
    fn exact_signed_rank_matches_enumeration() {
        // All positive, n = 5: W+ = 15, two-sided p = 2/32 (as scipy.stats.wilcoxon).
        let r = wilcoxon_signed_rank(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!((r.w_plus, r.exact), (15.0, true));
        assert!((r.p_value - 0.0625).abs() < 1e-12);
        // Brute force over every sign pattern of ranks 1..=10.
        let d = [0.3, -1.2, 2.5, -0.1, 4.0, 0.7, -3.3, 5.1, 6.6, -0.45];
        let r = wilcoxon_signed_rank(&d).unwrap();
        let n = d.len();
        let observed = r.w_plus.min((n * (n + 1) / 2) as f64 - r.w_plus);
        let mut extreme = 0;
        for mask in 0u32..(1 << n) {
            let w: usize = (0..n).filter(|k| mask >> k & 1 == 1).map(|k| k + 1).sum();
            let w = w.min(n * (n + 1) / 2 - w) as f64;
            if w <= observed {
                extreme += 1;
            }
        }
        assert!((r.p_value - extreme as f64 / 1024.0).abs() < 1e-12);
    }

    #[test]
    fn normal_approximation_is_close_to_exact_for_larger_samples() {
        let d: Vec<f64> = (1..=40)
            .map(|i| if i % 3 == 0 { -(i as f64) } else { i as f64 })
            .collect();
        let exact = wilcoxon_signed_rank(&d).unwrap();
        assert!(exact.exact);
        // The same data with one tie forces the normal approximation.
        let mut tied = d.clone();
        tied[0] = 2.0;
        let approx = wilcoxon_signed_rank(&tied).unwrap();
        assert!(!approx.exact);
        assert!(
            (exact.p_value - approx.p_value).abs() < 0.02,
            "{exact:?} {approx:?}"
        );
        assert!(wilcoxon_signed_rank(&[0.0, 0.0]).is_none());
    }

    fn noise(seed: u64, n: usize) -> Vec<f64> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
            .collect()
    }

    #[test]
    fn bootstrap_finds_a_shift_and_not_noise() {
        let shifted: Vec<Vec<f64>> = (0..3)
            .map(|s| noise(s, 40).iter().map(|v| v * 0.2 + 0.1).collect())
            .collect();
        let d = paired_difference(&shifted, 2000, 1).unwrap();
        assert!(d.low > 0.0 && d.p_value < 0.01, "{d:?}");
        assert!(
            d.equivalence_p(0.05) > 0.5,
            "a 0.1 shift is not within 0.05"
        );
        let centred: Vec<Vec<f64>> = (0..3).map(|s| noise(10 + s, 40)).collect();
        let d = paired_difference(&centred, 2000, 1).unwrap();
        assert!(d.low < 0.0 && d.high > 0.0 && d.p_value > 0.05, "{d:?}");
        let identical = vec![vec![0.0; 30]; 2];
        let d = paired_difference(&identical, 2000, 1).unwrap();
        assert!(d.equivalence_p(0.01) < 0.001);
        assert!(paired_difference(&[vec![1.0], vec![]], 10, 1).is_none());
    }

    /// Seed variation widens the interval: the same patient spread with a training
    /// effect that flips sign between seeds is not called a difference.
    #[test]
    fn seed_variation_is_in_the_interval() {
        let rows: Vec<Vec<f64>> = [0.2, -0.15, 0.25, -0.2]
            .iter()
            .map(|shift| vec![*shift; 50])
            .collect();
        let d = paired_difference(&rows, 2000, 3).unwrap();
        assert!(d.low < 0.0 && d.high > 0.0, "{d:?}");
    }
}
