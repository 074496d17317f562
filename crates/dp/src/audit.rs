//! Empirical privacy auditing in one training run (Steinke, Nasr and Jagielski,
//! "Privacy auditing with one (1) training run", NeurIPS 2023).
//!
//! `m` canaries are each included in the run independently with probability ½. After
//! the run an auditor, seeing what the adversary sees, guesses "in" or "out" for `r` of
//! them and gets `v` right. If the mechanism is (ε, δ)-DP with respect to one canary,
//! then P[at least v right] ≤ β + α·δ·2m, where β = P[Bin(r, q) ≥ v] with
//! q = e^ε / (1 + e^ε) and α = max over i = 1..v of P[v − i ≤ Bin(r, q) < v] / i (their
//! Theorem 5.2 and Appendix D). The largest ε whose bound falls below 1 − confidence is
//! an empirical lower bound: a mechanism that keeps its claim could not have produced
//! that many right guesses except with probability below 1 − confidence. It must never
//! exceed the claimed ε (if it does, the implementation or the accounting is broken);
//! it is usually well below, because one run's guesses carry limited evidence.

/// ln k! for k = 0..=n.
fn ln_factorials(n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    let mut acc = 0.0;
    out.push(acc);
    for k in 1..=n {
        acc += (k as f64).ln();
        out.push(acc);
    }
    out
}

/// P[Bin(r, q) = k] for k = 0..=r.
fn binomial_pmf(r: usize, q: f64) -> Vec<f64> {
    let lf = ln_factorials(r);
    let (lq, lp) = (q.ln(), (1.0 - q).ln());
    (0..=r)
        .map(|k| {
            let ln = lf[r] - lf[k] - lf[r - k] + k as f64 * lq + (r - k) as f64 * lp;
            ln.exp()
        })
        .collect()
}

/// The p-value of at least `v` right guesses out of `r` (of `m` canaries) under the
/// hypothesis that the mechanism is (ε, δ)-DP; at most 1.
pub fn one_run_p_value(m: usize, r: usize, v: usize, epsilon: f64, delta: f64) -> f64 {
    if v == 0 || r == 0 {
        return 1.0;
    }
    let q = 1.0 / (1.0 + (-epsilon).exp());
    let pmf = binomial_pmf(r, q);
    let beta: f64 = pmf[v.min(r)..].iter().sum();
    let mut alpha: f64 = 0.0;
    let mut below = 0.0;
    for i in 1..=v {
        below += pmf[v - i];
        alpha = alpha.max(below / i as f64);
    }
    (beta + alpha * delta * 2.0 * m as f64).min(1.0)
}

/// The largest ε (to 10^-6, in [0, 50]) that `v` right guesses of `r` reject at
/// `confidence` (e.g. 0.95): an empirical lower bound on the mechanism's ε at `delta`.
/// 0 when nothing is rejected.
pub fn epsilon_lower_bound(m: usize, r: usize, v: usize, delta: f64, confidence: f64) -> f64 {
    let level = 1.0 - confidence;
    if one_run_p_value(m, r, v, 0.0, delta) >= level {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0f64, 50.0f64);
    while hi - lo > 1e-6 {
        let mid = (lo + hi) / 2.0;
        if one_run_p_value(m, r, v, mid, delta) < level {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The auditor's guesses: "in" for the `k_in` highest scores, "out" for the `k_out`
/// lowest (abstaining on the rest); `(r, v)` = (guesses, right ones). The counts must be
/// fixed before the scores are seen.
pub fn guess(scores: &[f64], included: &[bool], k_in: usize, k_out: usize) -> (usize, usize) {
    let mut order: Vec<usize> = (0..scores.len().min(included.len())).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let k_in = k_in.min(order.len());
    let k_out = k_out.min(order.len() - k_in);
    let right_in = order[..k_in].iter().filter(|&&i| included[i]).count();
    let right_out = order[order.len() - k_out..]
        .iter()
        .filter(|&&i| !included[i])
        .count();
    (k_in + k_out, right_in + right_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_delta_the_bound_inverts_the_binomial_tail() {
        // All 100 guesses right and δ = 0: p = q^100, so the bound is the ε with
        // q^100 = 0.05.
        let eps = epsilon_lower_bound(1000, 100, 100, 0.0, 0.95);
        let q = 0.05f64.powf(1.0 / 100.0);
        let want = (q / (1.0 - q)).ln();
        assert!((eps - want).abs() < 1e-5, "{eps} vs {want}");
        // Half right is what a coin gets: no evidence.
        assert_eq!(epsilon_lower_bound(1000, 100, 50, 0.0, 0.95), 0.0);
    }

    #[test]
    fn delta_only_loosens_and_the_p_value_grows_with_epsilon() {
        let tight = epsilon_lower_bound(1000, 200, 190, 0.0, 0.95);
        let loose = epsilon_lower_bound(1000, 200, 190, 1e-5, 0.95);
        assert!(loose <= tight && loose > 0.0, "{loose} {tight}");
        let ps: Vec<f64> = [0.0, 0.5, 1.0, 2.0, 4.0]
            .iter()
            .map(|&e| one_run_p_value(1000, 200, 150, e, 1e-5))
            .collect();
        assert!(ps.windows(2).all(|w| w[0] <= w[1]), "{ps:?}");
        // The pmf sums to one.
        let total: f64 = binomial_pmf(300, 0.7).iter().sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn guesses_take_the_extremes() {
        let scores = [0.9, 0.1, 0.5, 0.8, 0.2, 0.4];
        let included = [true, false, true, false, false, true];
        // In: 0.9 (right), 0.8 (wrong); out: 0.1 (right), 0.2 (right).
        assert_eq!(guess(&scores, &included, 2, 2), (4, 3));
        assert_eq!(guess(&scores, &included, 10, 10), (6, 3));
    }
}
