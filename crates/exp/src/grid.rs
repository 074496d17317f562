//! Federated arms' grids: every key may be one value or a list, and an arm file expands
//! to the product of its lists, each combination validated with the key named.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_core::Strategy;
use tessera_dp::{DpConfig, Mechanism};

use crate::error::ExpError;
use crate::spec::{Arm, ArmFile, ArmPlan, ArmProtocol, FederatedArm, Transport, invalid};

/// One value or a list of values to sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Grid<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> Grid<T> {
    pub(crate) fn values(&self) -> Vec<T> {
        match self {
            Grid::One(v) => vec![v.clone()],
            Grid::Many(v) => v.clone(),
        }
    }
}

/// Float aggregation is the study's bare FedAvg: no DP, no dropouts, no transport.
fn check_float(
    protocol: ArmProtocol,
    mechanism: Mechanism,
    dropout: f64,
    transport: Transport,
    at: &str,
) -> Result<(), ExpError> {
    if protocol != ArmProtocol::Float {
        return Ok(());
    }
    let problem = if mechanism != Mechanism::None {
        Some("dp: DP needs the codec of a protocol (\"plaintext\", \"secagg\", \"secagg-plus\")")
    } else if dropout > 0.0 {
        Some("dropout: float aggregation runs no protocol that could lose a site")
    } else if transport != Transport::Memory {
        Some("transport: float aggregation runs in this process only")
    } else {
        None
    };
    match problem {
        Some(p) => invalid(format!("{at}.{p} (protocol = \"float\")")),
        None => Ok(()),
    }
}

/// Private fine-tuning federates the hospitals themselves, in this process, with every
/// site in every round; the patient unit trains per patient, which only fine-tuning's
/// trainer does.
fn check_fine_tuning(
    arm: &ArmFile,
    dp: &DpConfig,
    (sites, hospitals): (usize, usize),
    (heterogeneity, dropout): (f64, f64),
    protocol: ArmProtocol,
    at: &str,
) -> Result<(), ExpError> {
    let patient = dp.unit == tessera_dp::PrivacyUnit::Patient;
    if arm.fine_tune.is_none() {
        return if patient {
            invalid(format!(
                "{at}.dp.unit = \"patient\" needs fine_tune (per-patient training is private \
                 fine-tuning of a public model's heads)"
            ))
        } else {
            Ok(())
        };
    }
    let problem = if sites != hospitals || heterogeneity != 1.0 {
        Some(format!(
            "sites = {hospitals} and heterogeneity = 1 (the hospitals themselves)"
        ))
    } else if dropout > 0.0 || arm.canaries.unwrap_or(0) > 0 {
        Some("no dropout and no canaries".into())
    } else if arm.transport.unwrap_or_default() != Transport::Memory {
        Some("transport = \"memory\"".into())
    } else if protocol == ArmProtocol::Float {
        Some("a protocol other than \"float\"".into())
    } else {
        None
    };
    match problem {
        Some(p) => invalid(format!("{at}.fine_tune: private fine-tuning runs with {p}")),
        None => Ok(()),
    }
}

/// Fixed site weights: one positive weight per hospital, the hospitals themselves as
/// sites, in this process or over loopback QUIC; returned in thousandths.
fn site_weights(
    arm: &ArmFile,
    (sites, hospitals): (usize, usize),
    heterogeneity: f64,
    transport: Transport,
    at: &str,
) -> Result<Option<Vec<u64>>, ExpError> {
    let Some(weights) = &arm.site_weights else {
        return Ok(None);
    };
    let problem = if weights.len() != hospitals {
        Some(format!(
            "give one weight per training hospital ({hospitals}), not {}",
            weights.len()
        ))
    } else if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.001)) {
        Some(format!("{w} is not a weight of at least 0.001"))
    } else if sites != hospitals || heterogeneity != 1.0 {
        Some(format!(
            "needs sites = {hospitals} and heterogeneity = 1 (the hospitals themselves)"
        ))
    } else if transport == Transport::Processes {
        Some(
            "site processes report their own sample counts; use transport = \"memory\" or \"quic\""
                .into(),
        )
    } else if arm.weighting.is_some() || arm.canaries.is_some() || arm.fine_tune.is_some() {
        Some("replaces weighting; not with canaries or fine_tune".into())
    } else {
        None
    };
    match problem {
        Some(p) => invalid(format!("{at}.site_weights: {p}")),
        None => Ok(Some(
            weights
                .iter()
                .map(|w| (w * 1000.0).round() as u64)
                .collect(),
        )),
    }
}

/// A privacy audit's canaries count once each (uniform weighting), join a secure
/// federation in this process, and never drop out.
fn check_canaries(
    arm: &ArmFile,
    protocol: ArmProtocol,
    dropout: f64,
    transport: Transport,
    at: &str,
) -> Result<(), ExpError> {
    let Some(n) = arm.canaries else {
        return Ok(());
    };
    let problem = if !(2..=10_000).contains(&n) {
        Some(format!("canaries = {n}: between 2 and 10000"))
    } else if arm.weighting != Some(tessera_fl::Weighting::Uniform) {
        Some("canaries: needs weighting = \"uniform\" (each canary counts once)".into())
    } else if !protocol.is_secure() {
        Some("canaries: needs protocol = \"secagg\" or \"secagg-plus\"".into())
    } else if dropout > 0.0 {
        Some("canaries: needs dropout = 0".into())
    } else if transport != Transport::Memory {
        Some("canaries: needs transport = \"memory\"".into())
    } else {
        None
    };
    match problem {
        Some(p) => invalid(format!("{at}.{p}")),
        None => Ok(()),
    }
}

/// The product of a federated arm's grids.
/// The swept values whose ranges are checked one by one.
struct Swept<'a> {
    sites: &'a [usize],
    dropouts: &'a [f64],
    hets: &'a [f64],
    bits: &'a [u8],
    clips: &'a [f32],
}

/// The ranges of a federated arm's swept values, and what site processes allow.
fn check_ranges(
    at: &str,
    swept: Swept<'_>,
    transport: Transport,
    hospitals: usize,
) -> Result<(), ExpError> {
    let Swept {
        sites,
        dropouts,
        hets,
        bits,
        clips,
    } = swept;
    for &s in sites {
        if s < 2 {
            return invalid(format!(
                "{at}.sites = {s}: a federation needs at least 2 sites"
            ));
        }
    }
    for &d in dropouts {
        if !(0.0..0.9).contains(&d) {
            return invalid(format!("{at}.dropout = {d}: must be in [0, 0.9)"));
        }
    }
    for &h in hets {
        if !(0.0..=1.0).contains(&h) {
            return invalid(format!("{at}.heterogeneity = {h}: must be in [0, 1]"));
        }
    }
    for &b in bits {
        if !(8..=32).contains(&b) {
            return invalid(format!("{at}.bits = {b}: must be between 8 and 32"));
        }
    }
    for &c in clips {
        if !(c.is_finite() && c > 0.0) {
            return invalid(format!("{at}.clip = {c}: must be positive"));
        }
    }
    if transport == Transport::Processes
        && (sites.iter().any(|&s| s != hospitals)
            || hets.iter().any(|&h| h != 1.0)
            || dropouts.iter().any(|&d| d != 0.0))
    {
        return invalid(format!(
            "{at}.transport = \"processes\": each site process trains on its own hospital's \
             cohort, so sites = {hospitals}, heterogeneity = 1 and dropout = 0 are required"
        ));
    }
    Ok(())
}

/// Every combination of indices into lists of these lengths, the first list slowest.
fn product(lists: &[(&str, usize)]) -> Vec<Vec<usize>> {
    let mut combos: Vec<Vec<usize>> = vec![vec![]];
    for &(_, len) in lists {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                (0..len).map(move |i| {
                    let mut c = c.clone();
                    c.push(i);
                    c
                })
            })
            .collect();
    }
    combos
}

pub(crate) fn expand(arm: &ArmFile, at: &str, hospitals: usize) -> Result<Vec<Arm>, ExpError> {
    let protocols = arm
        .protocol
        .clone()
        .unwrap_or(Grid::One(ArmProtocol::Secagg))
        .values();
    let strategies = arm
        .strategy
        .clone()
        .unwrap_or(Grid::One(Strategy::FedAvg))
        .values();
    let sites = arm.sites.clone().unwrap_or(Grid::One(hospitals)).values();
    let dropouts = arm.dropout.clone().unwrap_or(Grid::One(0.0)).values();
    let hets = arm.heterogeneity.clone().unwrap_or(Grid::One(1.0)).values();
    let default_bits = if arm.dp.is_some() { 20 } else { 32 };
    let bits = arm.bits.clone().unwrap_or(Grid::One(default_bits)).values();
    let clips = arm.clip.clone().unwrap_or(Grid::One(1.0)).values();
    let (mechanisms, epsilons, l2_clips, delta) = match &arm.dp {
        Some(dp) => (
            dp.mechanism.values(),
            dp.epsilon.values(),
            dp.l2_clip.values(),
            dp.delta,
        ),
        None => (vec![Mechanism::None], vec![f64::NAN], vec![f64::NAN], 1e-5),
    };
    let lists: [(&str, usize); 10] = [
        ("protocol", protocols.len()),
        ("strategy", strategies.len()),
        ("sites", sites.len()),
        ("dropout", dropouts.len()),
        ("heterogeneity", hets.len()),
        ("bits", bits.len()),
        ("clip", clips.len()),
        ("dp.mechanism", mechanisms.len()),
        ("dp.epsilon", epsilons.len()),
        ("dp.l2_clip", l2_clips.len()),
    ];
    if let Some((key, _)) = lists.iter().find(|(_, n)| *n == 0) {
        return invalid(format!("{at}.{key}: an empty list sweeps nothing"));
    }
    let transport = arm.transport.unwrap_or_default();
    let swept = Swept {
        sites: &sites,
        dropouts: &dropouts,
        hets: &hets,
        bits: &bits,
        clips: &clips,
    };
    check_ranges(at, swept, transport, hospitals)?;
    let combos = product(&lists);
    let mut out = Vec::new();
    for idx in combos {
        let (protocol, strategy, n) = (protocols[idx[0]], &strategies[idx[1]], sites[idx[2]]);
        let (dropout, heterogeneity, b, clip) =
            (dropouts[idx[3]], hets[idx[4]], bits[idx[5]], clips[idx[6]]);
        let (mechanism, epsilon, l2_clip) =
            (mechanisms[idx[7]], epsilons[idx[8]], l2_clips[idx[9]]);
        let dp = if mechanism == Mechanism::None {
            DpConfig::default()
        } else {
            DpConfig {
                mechanism,
                epsilon,
                delta,
                // Set to the profile's rounds when the arm runs.
                rounds: 1,
                l2_clip,
                unit: arm.dp.as_ref().map(|d| d.unit).unwrap_or_default(),
                sampling_rate: arm.dp.as_ref().and_then(|d| d.sampling_rate).unwrap_or(1.0),
                // Set to the training patients when the arm runs.
                patients: 1,
            }
        };
        dp.validate()
            .map_err(|e| ExpError::Invalid(format!("{at}: {e}")))?;
        check_float(protocol, mechanism, dropout, transport, at)?;
        check_canaries(arm, protocol, dropout, transport, at)?;
        check_fine_tuning(
            arm,
            &dp,
            (n, hospitals),
            (heterogeneity, dropout),
            protocol,
            at,
        )?;
        if protocol == ArmProtocol::Plaintext
            && matches!(mechanism, Mechanism::Ddg | Mechanism::Skellam)
        {
            return invalid(format!(
                "{at}.dp.mechanism = \"{}\" needs protocol = \"secagg\" or \"secagg-plus\"",
                mechanism.name()
            ));
        }
        if protocol == ArmProtocol::Plaintext && dropout > 0.0 {
            return invalid(format!(
                "{at}.dropout = {dropout} with protocol = \"plaintext\": dropout sweeps need \
                 \"secagg\" or \"secagg-plus\" (the plaintext baseline would wait out its training \
                 deadline for every dropped site)"
            ));
        }
        let values = [
            protocol.name().to_string(),
            strategy.name().to_string(),
            n.to_string(),
            dropout.to_string(),
            heterogeneity.to_string(),
            b.to_string(),
            clip.to_string(),
            mechanism.name().to_string(),
            epsilon.to_string(),
            l2_clip.to_string(),
        ];
        let mut grid = BTreeMap::new();
        for ((key, len), value) in lists.iter().zip(values) {
            if *len > 1 {
                grid.insert(key.to_string(), value);
            }
        }
        let name = if grid.is_empty() {
            arm.name.clone()
        } else {
            let label: Vec<String> = grid.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}[{}]", arm.name, label.join(","))
        };
        out.push(Arm {
            name,
            plan: ArmPlan::Federated(FederatedArm {
                protocol,
                strategy: strategy.clone(),
                sites: n,
                dropout,
                heterogeneity,
                bits: b,
                clip,
                dp,
                transport,
                weighting: arm.weighting.unwrap_or_default(),
                canaries: arm.canaries.unwrap_or(0),
                fine_tune: arm.fine_tune.clone(),
                site_weights: site_weights(arm, (n, hospitals), heterogeneity, transport, at)?,
            }),
            grid,
        });
    }
    Ok(out)
}
