//! From a privacy target to the numbers a round needs: noise, grid step and bit budget.
//!
//! The total ρ that OpenDP converts to the target (ε, δ) is split evenly over the
//! rounds. For a grid step γ the sensitivity follows from the conditional rounding
//! bound, and the noise is the least that keeps one round within its ρ. The modular
//! wrap-around probability of one coordinate of the noisy sum is bounded by
//! sub-Gaussian tails: after the rotation the summed signal has variance proxy
//! (n·c/γ)²/m, each site's discrete Gaussian σ², and rounding shifts the sum by less
//! than n, so P(wrap) ≤ 2·exp(−(2^(b−1) − n)² / (2((n·c/γ)²/m + n·σ²))). A wrap of any
//! coordinate is an error of norm 2^b·γ, so the target is per vector: the plan takes the
//! finest grid whose union bound m·P(wrap) is at most [`WRAP_TARGET`]. For Skellam the
//! same bound with variance 2μ is a Gaussian-tail estimate, not a proof.

use serde::{Deserialize, Serialize};

use crate::accounting::{ddg_rho, gaussian_rho, rho_budget, skellam_rho};
use crate::codec::{Sensitivity, SiteNoise, sensitivity};
use crate::error::DpError;
use crate::sampler::Ratio;

/// Probability the plan allows that any coordinate of a round's vector wraps around.
pub const WRAP_TARGET: f64 = 1e-6;

/// Which differential privacy a federation applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// No differential privacy.
    #[default]
    None,
    /// Trusted-coordinator baseline: the coordinator adds discrete Gaussian noise after
    /// unmasking. The coordinator sees the exact sum; DP protects only what it releases.
    Central,
    /// Distributed discrete Gaussian: each site adds its share before masking.
    Ddg,
    /// Distributed Skellam (approximate sampler; see the sampler module).
    Skellam,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::None => "none",
            Mechanism::Central => "central",
            Mechanism::Ddg => "ddg",
            Mechanism::Skellam => "skellam",
        }
    }
}

/// Whom the guarantee protects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrivacyUnit {
    /// One site's whole update (zero-out adjacency; participation and counts public).
    #[default]
    Site,
    /// One patient: secret Poisson sampling of patients at every site, per-patient
    /// clipping, a fixed denominator (see [`crate::codec::Unit::Patient`]).
    Patient,
}

fn one() -> f64 {
    1.0
}

/// The `[dp]` settings of a federation or experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpConfig {
    pub mechanism: Mechanism,
    /// Target ε over the whole training run, at `delta`.
    pub epsilon: f64,
    pub delta: f64,
    /// Rounds the budget is planned for; a further round is refused.
    pub rounds: u64,
    /// L2 clipping norm of each site's update (unit `site`) or of each patient's
    /// contribution (unit `patient`).
    pub l2_clip: f64,
    #[serde(default)]
    pub unit: PrivacyUnit,
    /// Unit `patient`: the probability each patient is sampled in a round.
    #[serde(default = "one")]
    pub sampling_rate: f64,
    /// Unit `patient`: patients enrolled across all sites (public; the fixed denominator
    /// is `sampling_rate × patients`).
    #[serde(default)]
    pub patients: u64,
}

impl Default for DpConfig {
    fn default() -> Self {
        Self {
            mechanism: Mechanism::None,
            epsilon: 8.0,
            delta: 1e-5,
            rounds: 10,
            l2_clip: 1.0,
            unit: PrivacyUnit::Site,
            sampling_rate: 1.0,
            patients: 0,
        }
    }
}

impl DpConfig {
    /// Checks every field, naming the offending key (`dp.<field>`).
    pub fn validate(&self) -> Result<(), DpError> {
        let bad = |name, value, expected| {
            Err(DpError::BadParameter {
                name,
                value,
                expected,
            })
        };
        if self.mechanism == Mechanism::None {
            return Ok(());
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad("dp.epsilon", self.epsilon, "positive and finite");
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return bad("dp.delta", self.delta, "strictly between 0 and 1");
        }
        if self.rounds == 0 {
            return bad("dp.rounds", 0.0, "at least 1");
        }
        if !(self.l2_clip.is_finite() && self.l2_clip > 0.0) {
            return bad("dp.l2_clip", self.l2_clip, "positive and finite");
        }
        match self.unit {
            // Site selection is public: no amplification is claimed for it.
            PrivacyUnit::Site if self.sampling_rate != 1.0 => bad(
                "dp.sampling_rate",
                self.sampling_rate,
                "1 with unit = \"site\" (site selection is public; sample patients with unit = \"patient\")",
            ),
            PrivacyUnit::Patient if self.mechanism != Mechanism::Ddg => {
                bad("dp.mechanism", 0.0, "\"ddg\" with unit = \"patient\"")
            }
            PrivacyUnit::Patient if !(self.sampling_rate > 0.0 && self.sampling_rate <= 1.0) => {
                bad("dp.sampling_rate", self.sampling_rate, "in (0, 1]")
            }
            PrivacyUnit::Patient if self.patients == 0 => bad(
                "dp.patients",
                0.0,
                "the number of patients enrolled across all sites (at least 1)",
            ),
            _ => Ok(()),
        }
    }

    /// The fixed denominator of the patient unit: the expected number of sampled
    /// patients.
    pub fn denominator(&self) -> f64 {
        self.sampling_rate * self.patients as f64
    }
}

/// What the round is planned for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundShape {
    /// Sites invited (each adds noise when it contributes).
    pub sites: usize,
    /// Contributors the secure aggregation guarantees (its threshold).
    pub guaranteed: usize,
    pub bits: u8,
    /// Coordinates of the update.
    pub dim: usize,
}

/// The numbers one round runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct DpPlan {
    pub mechanism: Mechanism,
    pub gamma: f64,
    pub padded_dim: usize,
    pub sensitivity: Sensitivity,
    pub site_noise: SiteNoise,
    /// σ of the coordinator's noise (central only).
    pub central_sigma: Option<Ratio>,
    /// Noise parameter recorded in the ledger (grid units).
    pub noise: f64,
    /// Contributors the noise is accounted for.
    pub guaranteed: usize,
    /// The per-round budget, and the ρ the chosen noise actually costs (≤ the budget).
    pub rho_per_round: f64,
    pub rho: f64,
    /// Union bound on any coordinate of the round's vector wrapping around (Skellam:
    /// estimate).
    pub wrap_probability: f64,
    /// Standard deviation of the noise in one coordinate of the decoded sum, in update
    /// units, when only the guaranteed contributors take part.
    pub noise_std: f64,
    /// Poisson sampling rate of the privacy unit (1 for the site unit).
    pub sampling_rate: f64,
}

/// Plans one round of `config` for `shape`.
pub fn plan(config: &DpConfig, shape: RoundShape) -> Result<DpPlan, DpError> {
    config.validate()?;
    if config.mechanism == Mechanism::None {
        return Err(DpError::Infeasible(
            "dp.mechanism is \"none\": there is nothing to plan".into(),
        ));
    }
    if shape.guaranteed == 0 || shape.guaranteed > shape.sites {
        return Err(DpError::Infeasible(format!(
            "{} guaranteed contributors out of {} sites",
            shape.guaranteed, shape.sites
        )));
    }
    let half = 2f64.powi(i32::from(shape.bits) - 1);
    if half <= shape.sites as f64 * 2.0 {
        return Err(DpError::Infeasible(format!(
            "a {}-bit ring cannot hold the rounding of {} sites; raise bits to at least {}",
            shape.bits,
            shape.sites,
            (shape.sites as f64 * 4.0).log2().ceil() + 8.0
        )));
    }
    let m = shape.dim.max(1).next_power_of_two();
    if config.unit == PrivacyUnit::Patient {
        return crate::plan_patient::plan(config, shape, m);
    }
    let rho = rho_budget(config.epsilon, config.delta)? / config.rounds as f64;
    let at = |gamma: f64| candidate(config, shape, rho, m, gamma);
    // The coarsest grid considered puts the clipping norm at 2^8 grid units; past that
    // the rounding alone dominates the signal.
    let coarsest = config.l2_clip / 256.0;
    let best = at(coarsest)?;
    if best.wrap_probability > WRAP_TARGET {
        let v = best.wrap_variance;
        let per_coordinate = WRAP_TARGET / m as f64;
        let needed = shape.sites as f64 + (2.0 * v * (2.0 / per_coordinate).ln()).sqrt();
        let bits = needed.log2().ceil() as u32 + 1;
        return Err(DpError::Infeasible(format!(
            "the noisy sum needs at least {bits} bits per coordinate to keep the chance of any \
             wrap-around below {WRAP_TARGET:e}, but bits = {}; raise bits to {bits}, or raise \
             dp.epsilon, lower \
             dp.rounds, or use fewer coordinates",
            shape.bits
        )));
    }
    // Bisect on log γ for the finest grid that still meets the wrap target.
    let (mut lo, mut hi) = ((coarsest * 1e-9).ln(), coarsest.ln());
    let mut chosen = best;
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        match at(mid.exp()) {
            Ok(c) if c.wrap_probability <= WRAP_TARGET => {
                chosen = c;
                hi = mid;
            }
            _ => lo = mid,
        }
    }
    Ok(chosen.plan)
}

struct Candidate {
    plan: DpPlan,
    wrap_probability: f64,
    wrap_variance: f64,
}

fn candidate(
    config: &DpConfig,
    shape: RoundShape,
    rho: f64,
    m: usize,
    gamma: f64,
) -> Result<Candidate, DpError> {
    let scaled_clip = config.l2_clip / gamma;
    let sens = sensitivity(scaled_clip, m);
    let n = shape.sites as f64;
    let t = shape.guaranteed;
    let signal = (n * scaled_clip).powi(2) / m as f64;
    let (site_noise, central_sigma, noise, actual, per_site_var, total_var) = match config.mechanism
    {
        Mechanism::Central => {
            let sigma = Ratio::at_least(sens.l2 / (2.0 * rho).sqrt())?;
            let sigma = bump(sigma, |s| Ok(gaussian_rho(sens.l2, s)? <= rho))?;
            let s = sigma.to_f64();
            let actual = gaussian_rho(sens.l2, s)?;
            (SiteNoise::None, Some(sigma), s, actual, 0.0, s * s)
        }
        Mechanism::Ddg => {
            let guess = (sens.l2 / (2.0 * rho * t as f64).sqrt()).max(0.5);
            let sigma = Ratio::at_least(guess)?;
            let sigma = bump(sigma, |s| Ok(ddg_rho(sens, s, t, m)? <= rho))?;
            let s = sigma.to_f64();
            let actual = ddg_rho(sens, s, t, m)?;
            (
                SiteNoise::DiscreteGaussian { sigma },
                None,
                s,
                actual,
                s * s,
                t as f64 * s * s,
            )
        }
        Mechanism::Skellam => {
            let guess = sens.l2 * sens.l2 / (4.0 * rho * t as f64);
            let mu = bump_f64(guess, |mu| skellam_rho(sens, mu * t as f64) <= rho);
            (
                SiteNoise::Skellam { mu },
                None,
                mu,
                skellam_rho(sens, mu * t as f64),
                2.0 * mu,
                2.0 * mu * t as f64,
            )
        }
        Mechanism::None => unreachable!("checked by plan"),
    };
    let variance = signal + n * per_site_var;
    let per_coordinate = wrap_bound(shape.sites, scaled_clip, m, per_site_var, shape.bits);
    let wrap_probability = (per_coordinate * m as f64).min(1.0);
    Ok(Candidate {
        plan: DpPlan {
            mechanism: config.mechanism,
            gamma,
            padded_dim: m,
            sensitivity: sens,
            site_noise,
            central_sigma,
            noise,
            guaranteed: t,
            rho_per_round: rho,
            rho: actual,
            wrap_probability,
            noise_std: gamma * total_var.sqrt(),
            sampling_rate: 1.0,
        },
        wrap_probability,
        wrap_variance: variance,
    })
}

/// The bound on one coordinate's wrap-around probability for `sites` contributions of
/// L2 norm at most `scaled_clip` (grid units) in `m` rotated coordinates, each with
/// noise of variance (proxy) `per_site_variance`, in a `bits`-bit ring.
pub fn wrap_bound(
    sites: usize,
    scaled_clip: f64,
    m: usize,
    per_site_variance: f64,
    bits: u8,
) -> f64 {
    let n = sites as f64;
    let variance = (n * scaled_clip).powi(2) / m as f64 + n * per_site_variance;
    let margin = (2f64.powi(i32::from(bits) - 1) - n).max(0.0);
    (2.0 * (-(margin * margin) / (2.0 * variance.max(1e-300))).exp()).min(1.0)
}

/// The smallest grid ratio ≥ `start` (growing by 0.1%) that passes `ok`.
pub(crate) fn bump(
    start: Ratio,
    ok: impl Fn(f64) -> Result<bool, DpError>,
) -> Result<Ratio, DpError> {
    let mut sigma = start;
    for _ in 0..20_000 {
        if ok(sigma.to_f64())? {
            return Ok(sigma);
        }
        sigma = Ratio::at_least(sigma.to_f64() * 1.001)?;
    }
    Err(DpError::Infeasible(
        "no noise scale below 2^28 grid units meets the per-round budget".into(),
    ))
}

fn bump_f64(start: f64, ok: impl Fn(f64) -> bool) -> f64 {
    let mut mu = start.max(1e-6);
    while !ok(mu) {
        mu *= 1.001;
    }
    mu
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::epsilon;

    fn config(mechanism: Mechanism) -> DpConfig {
        DpConfig {
            mechanism,
            epsilon: 5.0,
            delta: 1e-5,
            rounds: 20,
            l2_clip: 1.0,
            ..DpConfig::default()
        }
    }

    const SHAPE: RoundShape = RoundShape {
        sites: 10,
        guaranteed: 7,
        bits: 20,
        dim: 5000,
    };

    #[test]
    fn planned_rounds_spend_the_budget_and_no_more() {
        for mechanism in [Mechanism::Central, Mechanism::Ddg, Mechanism::Skellam] {
            let cfg = config(mechanism);
            let p = plan(&cfg, SHAPE).unwrap();
            let rho = match mechanism {
                Mechanism::Central => {
                    gaussian_rho(p.sensitivity.l2, p.central_sigma.unwrap().to_f64()).unwrap()
                }
                Mechanism::Ddg => ddg_rho(p.sensitivity, p.noise, 7, p.padded_dim).unwrap(),
                _ => skellam_rho(p.sensitivity, p.noise * 7.0),
            };
            assert!(rho <= p.rho_per_round * (1.0 + 1e-12), "{mechanism:?}");
            let eps = epsilon(&[rho; 20], 1e-5).unwrap();
            assert!(eps <= 5.0 && eps > 4.9, "{mechanism:?}: ε {eps}");
            assert!(p.wrap_probability <= WRAP_TARGET, "{mechanism:?}");
            assert_eq!(p.padded_dim, 8192);
        }
    }

    #[test]
    fn more_guaranteed_contributors_mean_less_noise_per_site() {
        let few = plan(
            &config(Mechanism::Ddg),
            RoundShape {
                guaranteed: 3,
                ..SHAPE
            },
        )
        .unwrap();
        let many = plan(&config(Mechanism::Ddg), SHAPE).unwrap();
        assert!(many.noise * many.gamma < few.noise * few.gamma);
    }

    #[test]
    fn infeasible_bit_widths_say_how_many_bits_are_needed() {
        let err = plan(
            &DpConfig {
                epsilon: 0.01,
                ..config(Mechanism::Ddg)
            },
            RoundShape { bits: 12, ..SHAPE },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("raise bits to"), "{err}");
        let needed: u32 = err
            .split("raise bits to ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert!(needed > 12);
        let ok = plan(
            &DpConfig {
                epsilon: 0.01,
                ..config(Mechanism::Ddg)
            },
            RoundShape {
                bits: needed as u8,
                ..SHAPE
            },
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn budgets_beyond_the_conversion_are_refused_plainly() {
        let err = plan(
            &DpConfig {
                epsilon: 1e6,
                ..config(Mechanism::Ddg)
            },
            SHAPE,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("dp.epsilon = 1000000") && err.contains("no meaningful privacy"),
            "{err}"
        );
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (cfg, key) in [
            (
                DpConfig {
                    epsilon: -1.0,
                    ..config(Mechanism::Ddg)
                },
                "dp.epsilon",
            ),
            (
                DpConfig {
                    delta: 1.0,
                    ..config(Mechanism::Ddg)
                },
                "dp.delta",
            ),
            (
                DpConfig {
                    rounds: 0,
                    ..config(Mechanism::Ddg)
                },
                "dp.rounds",
            ),
            (
                DpConfig {
                    l2_clip: f64::NAN,
                    ..config(Mechanism::Ddg)
                },
                "dp.l2_clip",
            ),
        ] {
            let err = plan(&cfg, SHAPE).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    /// The wrap target is per vector: recomputed from the plan's own numbers, the chance
    /// that any of the m coordinates wraps is within the target (a per-coordinate
    /// target, as before, allowed up to m times that).
    #[test]
    fn the_wrap_target_covers_the_whole_vector() {
        let cfg = config(Mechanism::Ddg);
        let p = plan(&cfg, SHAPE).unwrap();
        let m = p.padded_dim;
        let per_coordinate = wrap_bound(
            SHAPE.sites,
            cfg.l2_clip / p.gamma,
            m,
            p.noise * p.noise,
            SHAPE.bits,
        );
        assert!(
            per_coordinate * m as f64 <= WRAP_TARGET,
            "{per_coordinate} × {m}"
        );
        assert!(p.wrap_probability <= WRAP_TARGET);
    }
}
