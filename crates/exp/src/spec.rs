//! Experiment files: arms, grids expanded to a product, and validation that names the
//! offending key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tessera_core::Strategy;
use tessera_data::{Registry, Role};
use tessera_dp::{DpConfig, Mechanism};
use tessera_fl::{Protocol, Weighting};

use crate::error::ExpError;

/// One value or a list of values to sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Grid<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> Grid<T> {
    fn values(&self) -> Vec<T> {
        match self {
            Grid::One(v) => vec![v.clone()],
            Grid::Many(v) => v.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArmKind {
    /// Trained on one training site's data only.
    SingleSite,
    /// Ensemble of earlier single-site arms (see [`Fusion`]).
    Ensemble,
    /// Centralised training on every training site's data (no privacy).
    Pooled,
    /// Federated training through the coordinator and site loops.
    Federated,
}

/// Overrides of the profile's training and evaluation sizes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub rounds: Option<u64>,
    pub local_steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    /// Keep every k-th lung slice without lesion for training (lesion slices are kept).
    pub train_negative_stride: Option<usize>,
    /// Evaluate every k-th lung slice.
    pub eval_slice_stride: Option<usize>,
    /// At most this many test patients per cohort.
    pub eval_patients: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpGrid {
    pub mechanism: Grid<Mechanism>,
    pub epsilon: Grid<f64>,
    #[serde(default = "default_delta")]
    pub delta: f64,
    pub l2_clip: Grid<f64>,
}

fn default_delta() -> f64 {
    1e-5
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmFile {
    pub name: String,
    pub kind: ArmKind,
    /// single-site: the training site.
    pub site: Option<String>,
    /// ensemble: names of earlier single-site arms.
    pub members: Option<Vec<String>>,
    /// ensemble: how the members' detections are fused ("nms", the study's, or
    /// "score-average").
    pub fusion: Option<Fusion>,
    // Federated settings (grids):
    pub protocol: Option<Grid<Protocol>>,
    pub strategy: Option<Grid<Strategy>>,
    /// Number of federated sites; 3 is the study's split by hospital, other values
    /// re-partition the training patients (hospital order kept).
    pub sites: Option<Grid<usize>>,
    /// Probability that a site drops out of a round after training.
    pub dropout: Option<Grid<f64>>,
    /// 1 keeps each site's own patients (the study); 0 deals patients to sites at random.
    pub heterogeneity: Option<Grid<f64>>,
    pub bits: Option<Grid<u8>>,
    /// Per-coordinate clip of the fixed-point codec (without DP).
    pub clip: Option<Grid<f32>>,
    pub dp: Option<DpGrid>,
    /// How the federation's messages travel (not a grid; default "memory").
    pub transport: Option<Transport>,
    /// "samples" (default: FedAvg's sample-count weights) or "uniform" (every site
    /// counts once; under site-level DP the noise is then calibrated to weight 1).
    pub weighting: Option<Weighting>,
}

/// How an ensemble fuses its members' detections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fusion {
    /// The study's: the union of the members' boxes, then non-maximum suppression
    /// keeping the highest score; score maps averaged.
    #[default]
    Nms,
    /// Soft voting: overlapping detections (IoU ≥ 0.5, one per member) become one at the
    /// best box with the members' mean score (absent members count 0).
    ScoreAverage,
}

/// How a federated arm's coordinator and sites talk: channels in this process, QUIC
/// with mutual TLS on 127.0.0.1 in this process, or QUIC to real `tessera site` child
/// processes that each prepare their own cohort. All three give the same model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    #[default]
    Memory,
    Quic,
    Processes,
}

impl Transport {
    pub fn is_memory(&self) -> bool {
        *self == Transport::Memory
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    pub name: String,
    pub description: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub settings: Settings,
    #[serde(rename = "arm")]
    pub arms: Vec<ArmFile>,
}

fn default_seed() -> u64 {
    1
}

/// A federated arm with every grid resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederatedArm {
    pub protocol: Protocol,
    pub strategy: Strategy,
    pub sites: usize,
    pub dropout: f64,
    pub heterogeneity: f64,
    pub bits: u8,
    pub clip: f32,
    pub dp: DpConfig,
    /// Absent from the serialised arm when "memory", so cached arms keep their keys.
    #[serde(default, skip_serializing_if = "Transport::is_memory")]
    pub transport: Transport,
    /// Absent when "samples", so cached arms keep their keys.
    #[serde(default, skip_serializing_if = "is_by_samples")]
    pub weighting: Weighting,
}

fn is_by_samples(w: &Weighting) -> bool {
    *w == Weighting::Samples
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ArmPlan {
    SingleSite {
        site: String,
    },
    Ensemble {
        members: Vec<String>,
        fusion: Fusion,
    },
    Pooled,
    Federated(FederatedArm),
}

/// One arm to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub name: String,
    pub plan: ArmPlan,
    /// The swept values that distinguish this arm within its grid (key → value).
    pub grid: BTreeMap<String, String>,
}

impl Arm {
    fn simple(name: &str, plan: ArmPlan) -> Self {
        Self {
            name: name.to_string(),
            plan,
            grid: BTreeMap::new(),
        }
    }
}

/// A validated experiment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Experiment {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub settings: Settings,
    pub arms: Vec<Arm>,
}

impl Experiment {
    /// The file of an experiment given by name (`experiments/<name>.toml`) or by path
    /// (anything ending in `.toml`).
    pub fn file_for(name_or_path: &str) -> std::path::PathBuf {
        if name_or_path.ends_with(".toml") {
            std::path::PathBuf::from(name_or_path)
        } else {
            Path::new("experiments").join(format!("{name_or_path}.toml"))
        }
    }

    /// Where its report goes by default: `paper/` for the study, `paper/<name>/` else.
    pub fn default_report_dir(&self) -> std::path::PathBuf {
        if self.name == "paper" {
            "paper".into()
        } else {
            Path::new("paper").join(&self.name)
        }
    }

    /// Reads and validates an experiment file against the registry.
    pub fn load(path: &Path, registry: &Registry) -> Result<Self, ExpError> {
        let text = std::fs::read_to_string(path).map_err(|e| ExpError::Io {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::parse(&text, registry).map_err(|e| match e {
            ExpError::Invalid(m) => ExpError::Invalid(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn parse(text: &str, registry: &Registry) -> Result<Self, ExpError> {
        let file: ExperimentFile =
            toml::from_str(text).map_err(|e| ExpError::Invalid(e.to_string()))?;
        file.resolve(registry)
    }
}

fn invalid<T>(message: String) -> Result<T, ExpError> {
    Err(ExpError::Invalid(message))
}

impl ExperimentFile {
    fn resolve(self, registry: &Registry) -> Result<Experiment, ExpError> {
        if self.arms.is_empty() {
            return invalid("no [[arm]] tables: an experiment needs at least one arm".into());
        }
        check_settings(&self.settings)?;
        let training: Vec<&str> = registry
            .cohorts
            .iter()
            .filter(|c| c.role == Role::TrainingSite)
            .map(|c| c.id.as_str())
            .collect();
        let mut arms: Vec<Arm> = Vec::new();
        for (i, arm) in self.arms.iter().enumerate() {
            let at = format!("arm[{i}] ({})", arm.name);
            if arm.name.is_empty()
                || !arm
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return invalid(format!(
                    "{at}.name: use letters, digits, '-', '_' or '.' only"
                ));
            }
            let federated_keys = [
                ("protocol", arm.protocol.is_some()),
                ("strategy", arm.strategy.is_some()),
                ("sites", arm.sites.is_some()),
                ("dropout", arm.dropout.is_some()),
                ("heterogeneity", arm.heterogeneity.is_some()),
                ("bits", arm.bits.is_some()),
                ("clip", arm.clip.is_some()),
                ("dp", arm.dp.is_some()),
                ("transport", arm.transport.is_some()),
                ("weighting", arm.weighting.is_some()),
            ];
            if arm.kind != ArmKind::Federated
                && let Some((key, _)) = federated_keys.iter().find(|(_, set)| *set)
            {
                return invalid(format!("{at}.{key}: only federated arms take this key"));
            }
            if arm.kind != ArmKind::SingleSite && arm.site.is_some() {
                return invalid(format!("{at}.site: only single-site arms take this key"));
            }
            if arm.kind != ArmKind::Ensemble && arm.members.is_some() {
                return invalid(format!("{at}.members: only ensemble arms take this key"));
            }
            if arm.kind != ArmKind::Ensemble && arm.fusion.is_some() {
                return invalid(format!("{at}.fusion: only ensemble arms take this key"));
            }
            let resolved = match arm.kind {
                ArmKind::SingleSite => {
                    let Some(site) = &arm.site else {
                        return invalid(format!("{at}.site: missing (the training site)"));
                    };
                    if !training.contains(&site.as_str()) {
                        return invalid(format!(
                            "{at}.site = \"{site}\" is not a training site of the registry ({})",
                            training.join(", ")
                        ));
                    }
                    vec![Arm::simple(
                        &arm.name,
                        ArmPlan::SingleSite { site: site.clone() },
                    )]
                }
                ArmKind::Ensemble => {
                    let Some(members) = &arm.members else {
                        return invalid(format!("{at}.members: missing"));
                    };
                    if members.len() < 2 {
                        return invalid(format!("{at}.members: name at least two arms"));
                    }
                    for m in members {
                        let ok = arms
                            .iter()
                            .any(|a| &a.name == m && matches!(a.plan, ArmPlan::SingleSite { .. }));
                        if !ok {
                            return invalid(format!(
                                "{at}.members: \"{m}\" is not an earlier single-site arm"
                            ));
                        }
                    }
                    vec![Arm::simple(
                        &arm.name,
                        ArmPlan::Ensemble {
                            members: members.clone(),
                            fusion: arm.fusion.unwrap_or_default(),
                        },
                    )]
                }
                ArmKind::Pooled => vec![Arm::simple(&arm.name, ArmPlan::Pooled)],
                ArmKind::Federated => expand(arm, &at, training.len())?,
            };
            for resolved in resolved {
                if arms.iter().any(|a| a.name == resolved.name) {
                    return invalid(format!("{at}.name: \"{}\" is used twice", resolved.name));
                }
                arms.push(resolved);
            }
        }
        Ok(Experiment {
            name: self.name,
            description: self.description,
            seed: self.seed,
            settings: self.settings,
            arms,
        })
    }
}

fn check_settings(s: &Settings) -> Result<(), ExpError> {
    let positive = [
        ("settings.rounds", s.rounds.map(|v| v as f64)),
        ("settings.local_steps", s.local_steps.map(|v| v as f64)),
        ("settings.batch_size", s.batch_size.map(|v| v as f64)),
        ("settings.learning_rate", s.learning_rate),
        (
            "settings.train_negative_stride",
            s.train_negative_stride.map(|v| v as f64),
        ),
        (
            "settings.eval_slice_stride",
            s.eval_slice_stride.map(|v| v as f64),
        ),
        ("settings.eval_patients", s.eval_patients.map(|v| v as f64)),
    ];
    for (key, value) in positive {
        if let Some(v) = value
            && !(v.is_finite() && v > 0.0)
        {
            return invalid(format!("{key} = {v}: must be positive"));
        }
    }
    Ok(())
}

/// The product of a federated arm's grids.
fn expand(arm: &ArmFile, at: &str, hospitals: usize) -> Result<Vec<Arm>, ExpError> {
    let protocols = arm
        .protocol
        .clone()
        .unwrap_or(Grid::One(Protocol::Secagg))
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
    for &s in &sites {
        if s < 2 {
            return invalid(format!(
                "{at}.sites = {s}: a federation needs at least 2 sites"
            ));
        }
    }
    for &d in &dropouts {
        if !(0.0..0.9).contains(&d) {
            return invalid(format!("{at}.dropout = {d}: must be in [0, 0.9)"));
        }
    }
    for &h in &hets {
        if !(0.0..=1.0).contains(&h) {
            return invalid(format!("{at}.heterogeneity = {h}: must be in [0, 1]"));
        }
    }
    for &b in &bits {
        if !(8..=32).contains(&b) {
            return invalid(format!("{at}.bits = {b}: must be between 8 and 32"));
        }
    }
    for &c in &clips {
        if !(c.is_finite() && c > 0.0) {
            return invalid(format!("{at}.clip = {c}: must be positive"));
        }
    }
    let transport = arm.transport.unwrap_or_default();
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
    // Every combination of indices into the ten lists, first list slowest.
    let mut combos: Vec<Vec<usize>> = vec![vec![]];
    for (_, len) in lists {
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
            }
        };
        dp.validate()
            .map_err(|e| ExpError::Invalid(format!("{at}: {e}")))?;
        if protocol == Protocol::Plaintext
            && matches!(mechanism, Mechanism::Ddg | Mechanism::Skellam)
        {
            return invalid(format!(
                "{at}.dp.mechanism = \"{}\" needs protocol = \"secagg\" or \"secagg-plus\"",
                mechanism.name()
            ));
        }
        if protocol == Protocol::Plaintext && dropout > 0.0 {
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
            }),
            grid,
        });
    }
    Ok(out)
}
