//! What a round's parameters will be, from the federation's settings alone: threshold
//! and graph, codec and DP plan, public round randomness. The coordinator machine plans
//! each round with these, and [`preflight`] runs them once before anything listens, so
//! that settings no round could satisfy are refused up front.

use tessera_core::seed::{Purpose, RootSeed, SeedContext};
use tessera_dp::{
    CodecSpec, DpPlan, FixedPointSpec, Mechanism, PrivacyUnit, PrivateCodecSpec, RoundShape, Unit,
};
use tessera_secagg::plan::{PlanRequest, plan_secagg, plan_secagg_plus};
use tessera_secagg::{FixedPoint, GraphSpec, Modulus};

use crate::config::{FederationConfig, Protocol};
use crate::error::FlError;

/// Public per-round randomness for `purpose`: anyone who knows the session can derive
/// it, and sites check the coordinator used it.
pub(crate) fn public_seed(session: &[u8; 16], purpose: Purpose, round: u64) -> [u8; 32] {
    RootSeed::PUBLIC.derive(purpose, SeedContext::session(*session).round(round))
}

/// The threshold and graph for `n` participants.
/// The corruption bound c for `n` sites: the expected corrupt fraction, rounded up.
pub(crate) fn corrupt_sites(config: &FederationConfig, n: usize) -> usize {
    (config.corruption_rate * n as f64).ceil() as usize
}

pub(crate) fn plan(
    config: &FederationConfig,
    round: u64,
    n: usize,
) -> Result<(u32, GraphSpec), FlError> {
    let mut request = PlanRequest::new(n, config.dropout_rate, config.corruption_rate);
    request.threat = config.threat.into();
    let plan = match config.protocol {
        Protocol::Secagg | Protocol::Plaintext => plan_secagg(&request)?,
        Protocol::SecaggPlus => plan_secagg_plus(&request)?,
    };
    let graph = match plan.degree {
        // Public round randomness (see the secagg crate's notes on who may choose it).
        Some(k) => GraphSpec::RandomRegular {
            degree: k as u32,
            seed: public_seed(&config.session, Purpose::Graph, round),
        },
        None => GraphSpec::Complete,
    };
    Ok((plan.threshold as u32, graph))
}

/// The round's codec: fixed point without DP, the private codec with it.
pub(crate) fn codec_spec(
    config: &FederationConfig,
    dim: usize,
    round: u64,
    n: usize,
    threshold: u32,
    modulus: Modulus,
) -> Result<(CodecSpec, Option<DpPlan>), FlError> {
    let c = config;
    if c.dp.mechanism == Mechanism::None {
        let spec = FixedPointSpec {
            bits: c.bits,
            clip: c.clip,
            scale: FixedPoint::max_scale(modulus, c.clip, n),
            max_sites: n,
            max_weight: c.codec_max_weight(),
            dim,
        };
        return Ok((CodecSpec::FixedPoint(spec), None));
    }
    // Without secure aggregation nothing guarantees contributors; central noise does
    // not depend on them. With it, at least t sites contribute, but up to c of them may
    // collude with the coordinator and subtract their own noise: only t − c count.
    let corrupt = corrupt_sites(c, n);
    let guaranteed = if c.protocol.is_secure() {
        (threshold as usize).saturating_sub(corrupt).max(1)
    } else {
        1
    };
    let shape = RoundShape {
        sites: n,
        guaranteed,
        bits: c.bits,
        dim,
    };
    let plan = tessera_dp::plan(&c.dp, shape)?;
    let spec = PrivateCodecSpec {
        bits: c.bits,
        l2_clip: c.dp.l2_clip,
        gamma: plan.gamma,
        dim,
        max_sites: n,
        max_weight: c.codec_max_weight(),
        rotation_seed: public_seed(&config.session, Purpose::Rotation, round),
        site_noise: plan.site_noise,
        unit: match c.dp.unit {
            PrivacyUnit::Site => Unit::Site,
            PrivacyUnit::Patient => Unit::Patient {
                sampling_rate: c.dp.sampling_rate,
                denominator: c.dp.denominator(),
            },
        },
    };
    Ok((CodecSpec::Private(spec), Some(plan)))
}

/// The plan of a full round, as the coordinator will make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preflight {
    pub sites: usize,
    pub threshold: u32,
    /// SecAgg+'s graph degree; `None` for the complete graph.
    pub degree: Option<u32>,
}

/// Plans a round of `sites` participants for a `dim`-parameter model as the coordinator
/// will: the threshold, the codec's bit budget and, with DP, the noise plan. An error
/// names what to change, before a port is bound.
pub fn preflight(
    config: &FederationConfig,
    sites: usize,
    dim: usize,
) -> Result<Preflight, FlError> {
    config.validate()?;
    let modulus = Modulus::new(config.bits).map_err(|e| FlError::Config {
        key: "bits",
        message: e.to_string(),
    })?;
    let (threshold, graph) = plan(config, 1, sites)?;
    let (spec, _) = codec_spec(config, dim, 1, sites, threshold, modulus)?;
    spec.codec()?;
    let degree = match graph {
        GraphSpec::RandomRegular { degree, .. } => Some(degree),
        GraphSpec::Complete => None,
    };
    Ok(Preflight {
        sites,
        threshold,
        degree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Threat;

    /// Colluding sites do not count as noise sources: planning for corrupt sites needs
    /// more noise per site for the same ε.
    #[test]
    fn corrupt_sites_are_not_counted_as_noise_sources() {
        let dp = tessera_dp::DpConfig {
            mechanism: tessera_dp::Mechanism::Ddg,
            epsilon: 5.0,
            delta: 1e-5,
            rounds: 10,
            l2_clip: 1.0,
            ..Default::default()
        };
        let honest = FederationConfig::builder([0; 16], "ck")
            .codec(24, 1.0, 100)
            .dp(dp)
            .build()
            .unwrap();
        let colluding = FederationConfig {
            corruption_rate: 0.2,
            ..honest.clone()
        };
        let m = Modulus::new(24).unwrap();
        let (_, a) = codec_spec(&honest, 100, 1, 10, 6, m).unwrap();
        let (_, b) = codec_spec(&colluding, 100, 1, 10, 6, m).unwrap();
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.guaranteed, b.guaranteed), (6, 4));
        let sigma = |p: &DpPlan| match p.site_noise {
            tessera_dp::SiteNoise::DiscreteGaussian { sigma } => sigma.to_f64(),
            other => panic!("{other:?}"),
        };
        assert!(sigma(&b) > sigma(&a), "{} vs {}", sigma(&b), sigma(&a));
    }

    #[test]
    fn the_active_threat_model_plans_higher_thresholds() {
        let semi = FederationConfig::builder([0; 16], "ck")
            .rates(0.05, 0.1)
            .build()
            .unwrap();
        let active = FederationConfig {
            threat: Threat::ActiveServer,
            ..semi.clone()
        };
        let a = preflight(&semi, 20, 100).unwrap();
        let b = preflight(&active, 20, 100).unwrap();
        // 20 sites, c = 2 corrupt: the active bound needs 2t > 20 + 2
        assert!(b.threshold > a.threshold, "{a:?} {b:?}");
        assert!(2 * b.threshold as usize > 20 + 2);
    }
}
