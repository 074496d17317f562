//! Choosing the graph degree k and the threshold t, with the failure probabilities
//! they imply.
//!
//! Inputs: the number of sites n, the expected fraction δ of sites that drop during a
//! round (each independently), the fraction γ of sites that may be corrupt and collude
//! with the server, the threat model, and two targets: privacy failure ≤ 2^-σ and
//! correctness failure ≤ 2^-η.
//!
//! **SecAgg (complete graph).** Privacy is deterministic: against a semi-honest server
//! colluding with n_C = ⌊γn⌋ sites it needs t > n_C and t > n/2; against an active
//! server, which can tell different sites different survivor sets, an honest site's two
//! kinds of shares can both reach t only if 2t ≤ n + n_C, so t > (n + n_C)/2. The round
//! completes whenever at least t sites survive; we report P[Bin(n, 1−δ) < t] and refuse
//! only when it exceeds 1/2 (an aborted round is retried, so small federations with a
//! few percent of aborted rounds are still usable).
//!
//! **SecAgg+ (random k-regular graph).** Each site's secrets are shared among its k
//! neighbours and itself. With c the number of corrupt neighbours any site has (a
//! high-probability bound, union over all sites), privacy needs t > c (semi-honest) or
//! 2t > k + 1 + c (active), and the honest surviving sites must stay connected in the
//! graph, otherwise a partial sum is exposed. Correctness needs every site to keep t
//! surviving holders. Neighbourhood counts use exact binomial tails with a union bound
//! over sites. Connectivity is bounded for the Erdős–Rényi graph with the same mean
//! degree (union over cuts, Σ_s C(h,s)(1−p)^{s(h−s)} for h honest survivors); a random
//! regular graph has no low-degree vertices and is better connected, so we use this as a
//! conservative estimate rather than a proof for the regular graph.

use serde::Serialize;
use thiserror::Error;

/// Who the aggregation must protect against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ThreatModel {
    /// The server follows the protocol but may collude with corrupt sites.
    SemiHonest,
    /// The server may deviate (e.g. send different survivor sets to different sites).
    ActiveServer,
}

/// What the caller wants to tolerate.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PlanRequest {
    pub sites: usize,
    /// Expected fraction of sites that drop out during a round (independently).
    pub dropout_rate: f64,
    /// Fraction of sites that may be corrupt and collude with the server.
    pub corruption_rate: f64,
    pub threat: ThreatModel,
    /// Privacy failure target 2^-σ.
    pub security_bits: f64,
    /// Round-failure target 2^-η used when choosing the SecAgg+ degree.
    pub correctness_bits: f64,
}

impl PlanRequest {
    /// σ = 40, η = 20, semi-honest: the defaults used by Tessera's configs.
    pub fn new(sites: usize, dropout_rate: f64, corruption_rate: f64) -> Self {
        Self {
            sites,
            dropout_rate,
            corruption_rate,
            threat: ThreatModel::SemiHonest,
            security_bits: 40.0,
            correctness_bits: 20.0,
        }
    }
}

/// A chosen configuration and what it guarantees.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// `None` for the complete graph (SecAgg), `Some(k)` for SecAgg+.
    pub degree: Option<usize>,
    pub threshold: usize,
    /// Holders of each site's shares (k + 1, or n).
    pub holders: usize,
    /// Corrupt sites (SecAgg) or corrupt neighbours per site (SecAgg+) tolerated.
    pub corrupt_tolerated: usize,
    /// log2 of the bound on the probability that privacy fails (−∞ when impossible;
    /// also −∞ when the probability underflows f64, i.e. is below 2^-1074).
    pub log2_privacy_failure: f64,
    /// log2 of the bound on the probability that a round cannot complete.
    pub log2_correctness_failure: f64,
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum PlanError {
    #[error("planning needs at least 2 sites, got {0}")]
    TooFewSites(usize),
    #[error("{name} = {value} must be in [0, 1)")]
    BadRate { name: &'static str, value: f64 },
    #[error(
        "SecAgg with {sites} sites needs threshold {threshold} to protect against {corrupt} corrupt sites \
         ({threat:?}), which leaves room for only {tolerated} dropouts: at dropout rate {dropout_rate} most \
         rounds would abort (failure probability {failure:.2}). Lower the dropout or corruption rate, or add sites"
    )]
    Infeasible {
        sites: usize,
        threshold: usize,
        corrupt: usize,
        threat: ThreatModel,
        tolerated: usize,
        failure: f64,
        dropout_rate: f64,
    },
}

/// ln(k!) for k ≤ n.
struct LnFactorial(Vec<f64>);

impl LnFactorial {
    fn new(n: usize) -> Self {
        let mut t = Vec::with_capacity(n + 1);
        t.push(0.0);
        for k in 1..=n {
            t.push(t[k - 1] + (k as f64).ln());
        }
        Self(t)
    }

    fn ln_choose(&self, n: usize, k: usize) -> f64 {
        self.0[n] - self.0[k] - self.0[n - k]
    }

    /// P[Bin(n, p) ≥ x].
    fn binomial_upper(&self, n: usize, p: f64, x: usize) -> f64 {
        if x == 0 {
            return 1.0;
        }
        if x > n || p <= 0.0 {
            return 0.0;
        }
        if p >= 1.0 {
            return 1.0;
        }
        let (lp, lq) = (p.ln(), (1.0 - p).ln());
        let sum: f64 = (x..=n)
            .map(|j| (self.ln_choose(n, j) + j as f64 * lp + (n - j) as f64 * lq).exp())
            .sum();
        sum.min(1.0)
    }

    /// P[Bin(n, p) < x].
    fn binomial_lower(&self, n: usize, p: f64, x: usize) -> f64 {
        if x == 0 {
            return 0.0;
        }
        if p >= 1.0 {
            return if x > n { 1.0 } else { 0.0 };
        }
        if p <= 0.0 {
            return 1.0;
        }
        let (lp, lq) = (p.ln(), (1.0 - p).ln());
        let sum: f64 = (0..x.min(n + 1))
            .map(|j| (self.ln_choose(n, j) + j as f64 * lp + (n - j) as f64 * lq).exp())
            .sum();
        sum.min(1.0)
    }
}

fn check(req: &PlanRequest) -> Result<(), PlanError> {
    if req.sites < 2 {
        return Err(PlanError::TooFewSites(req.sites));
    }
    for (name, value) in [
        ("dropout_rate", req.dropout_rate),
        ("corruption_rate", req.corruption_rate),
    ] {
        if !(0.0..1.0).contains(&value) {
            return Err(PlanError::BadRate { name, value });
        }
    }
    Ok(())
}

/// SecAgg on the complete graph: the smallest safe threshold.
pub fn plan_secagg(req: &PlanRequest) -> Result<Plan, PlanError> {
    check(req)?;
    let n = req.sites;
    let corrupt = (req.corruption_rate * n as f64).floor() as usize;
    let threshold = match req.threat {
        ThreatModel::SemiHonest => (n / 2 + 1).max(corrupt + 1),
        ThreatModel::ActiveServer => (n + corrupt) / 2 + 1,
    }
    .min(n);
    let lf = LnFactorial::new(n);
    let fail = lf.binomial_lower(n, 1.0 - req.dropout_rate, threshold);
    let log2_fail = fail.log2();
    // An aborted round is retried, so SecAgg only refuses when most rounds would abort.
    if fail > 0.5 {
        return Err(PlanError::Infeasible {
            sites: n,
            threshold,
            corrupt,
            threat: req.threat,
            tolerated: n - threshold,
            failure: fail,
            dropout_rate: req.dropout_rate,
        });
    }
    Ok(Plan {
        degree: None,
        threshold,
        holders: n,
        corrupt_tolerated: corrupt,
        log2_privacy_failure: f64::NEG_INFINITY,
        log2_correctness_failure: log2_fail,
    })
}

/// SecAgg+: the smallest degree k (with its threshold) meeting both targets; falls back
/// to the complete graph when no sparser graph does.
pub fn plan_secagg_plus(req: &PlanRequest) -> Result<Plan, PlanError> {
    check(req)?;
    let n = req.sites;
    let lf = LnFactorial::new(n);
    let nf = n as f64;
    let privacy_target = (-req.security_bits).exp2();
    let correctness_target = (-req.correctness_bits).exp2();
    // Honest survivors (a pessimistic count) and the cut bound for their connectivity.
    let honest = ((1.0 - req.dropout_rate - req.corruption_rate) * nf)
        .floor()
        .max(0.0) as usize;
    for k in 2..n - 1 {
        if (n * k) % 2 == 1 {
            continue;
        }
        // Smallest c with n·P[Bin(k, γ) > c] ≤ target: corrupt neighbours of any site.
        let Some(corrupt) = (0..=k)
            .find(|&c| nf * lf.binomial_upper(k, req.corruption_rate, c + 1) <= privacy_target)
        else {
            continue;
        };
        let corrupt_fail = nf * lf.binomial_upper(k, req.corruption_rate, corrupt + 1);
        let holders = k + 1;
        let threshold = match req.threat {
            ThreatModel::SemiHonest => (holders / 2 + 1).max(corrupt + 1),
            ThreatModel::ActiveServer => (holders + corrupt) / 2 + 1,
        };
        if threshold > holders {
            continue;
        }
        // A dropped site's mask key needs t surviving holders among its k neighbours.
        let correctness = (nf * lf.binomial_lower(k, 1.0 - req.dropout_rate, threshold)).min(1.0);
        if correctness > correctness_target {
            continue;
        }
        let p = k as f64 / (nf - 1.0);
        let disconnect: f64 = if honest < 2 {
            1.0
        } else {
            (1..=honest / 2)
                .map(|s| {
                    (lf.ln_choose(honest, s) + (s * (honest - s)) as f64 * (1.0 - p).ln()).exp()
                })
                .sum()
        };
        let privacy = (corrupt_fail + disconnect).min(1.0);
        if privacy > privacy_target {
            continue;
        }
        return Ok(Plan {
            degree: Some(k),
            threshold,
            holders,
            corrupt_tolerated: corrupt,
            log2_privacy_failure: privacy.log2(),
            log2_correctness_failure: correctness.log2(),
        });
    }
    plan_secagg(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tails_match_hand_computation() {
        let lf = LnFactorial::new(10);
        // P[Bin(4, 1/2) ≥ 3] = (4 + 1)/16
        assert!((lf.binomial_upper(4, 0.5, 3) - 5.0 / 16.0).abs() < 1e-12);
        // P[Bin(4, 1/2) < 1] = 1/16
        assert!((lf.binomial_lower(4, 0.5, 1) - 1.0 / 16.0).abs() < 1e-12);
        // P[Bin(3, 0.1) < 2] = 0.9^3 + 3·0.1·0.9^2
        assert!((lf.binomial_lower(3, 0.1, 2) - (0.729 + 0.243)).abs() < 1e-12);
        assert_eq!(lf.binomial_upper(5, 0.0, 1), 0.0);
        assert_eq!(lf.binomial_lower(5, 1.0, 5), 0.0);
    }

    #[test]
    fn secagg_thresholds_follow_the_threat_model() {
        let mut req = PlanRequest::new(30, 0.05, 0.2);
        let semi = plan_secagg(&req).unwrap();
        assert_eq!(semi.threshold, 16); // max(⌊30/2⌋+1, 6+1)
        req.threat = ThreatModel::ActiveServer;
        let active = plan_secagg(&req).unwrap();
        assert_eq!(active.threshold, (30 + 6) / 2 + 1);
        assert!(active.log2_correctness_failure > semi.log2_correctness_failure);
    }

    #[test]
    fn small_federations_get_a_plan_with_their_abort_probability() {
        // The study's three hospitals: t = 2 of 3, a round aborts when two sites drop.
        let plan = plan_secagg(&PlanRequest::new(3, 0.05, 0.0)).unwrap();
        assert_eq!(plan.threshold, 2);
        let p: f64 = 3.0 * 0.05f64.powi(2) * 0.95 + 0.05f64.powi(3);
        assert!((plan.log2_correctness_failure - p.log2()).abs() < 1e-9);
    }

    #[test]
    fn secagg_rejects_dropout_it_cannot_survive() {
        let req = PlanRequest::new(10, 0.5, 0.0);
        let err = plan_secagg(&req).unwrap_err();
        assert!(matches!(err, PlanError::Infeasible { threshold: 6, .. }));
        assert!(err.to_string().contains("Lower the dropout"));
    }

    #[test]
    fn secagg_plus_is_sparse_for_many_sites_and_meets_targets() {
        let req = PlanRequest::new(1000, 0.05, 0.05);
        let plan = plan_secagg_plus(&req).unwrap();
        let k = plan.degree.expect("a sparse graph for 1000 sites");
        assert!(k < 1000 / 4, "degree {k}");
        assert!(plan.log2_privacy_failure <= -40.0);
        assert!(plan.log2_correctness_failure <= -20.0);
        assert!(plan.threshold > plan.holders / 2 && plan.threshold > plan.corrupt_tolerated);
        // More dropouts or corruption need a denser graph.
        let denser = plan_secagg_plus(&PlanRequest::new(1000, 0.2, 0.1)).unwrap();
        assert!(denser.degree.unwrap_or(999) > k);
    }

    #[test]
    fn secagg_plus_falls_back_to_complete_for_few_sites() {
        let plan = plan_secagg_plus(&PlanRequest::new(8, 0.0, 0.0)).unwrap();
        assert_eq!(plan.degree, None);
        assert_eq!(plan.holders, 8);
    }

    #[test]
    fn rates_are_validated() {
        assert!(matches!(
            plan_secagg(&PlanRequest::new(10, 1.5, 0.0)),
            Err(PlanError::BadRate {
                name: "dropout_rate",
                ..
            })
        ));
        assert!(matches!(
            plan_secagg_plus(&PlanRequest::new(1, 0.0, 0.0)),
            Err(PlanError::TooFewSites(1))
        ));
    }
}
