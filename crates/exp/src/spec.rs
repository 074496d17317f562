//! Experiment files: arms, grids expanded to a product, and validation that names the
//! offending key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tessera_core::Strategy;
use tessera_data::{Registry, Role};
use tessera_dp::{DpConfig, Mechanism, PrivacyUnit};
use tessera_fl::{Protocol, Weighting};

use crate::error::ExpError;
pub use crate::grid::Grid;
use crate::grid::expand;
pub use crate::settings::{DetectorChoice, Settings};
use crate::settings::{check_seeds, check_settings};

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
    /// The model pretrained on a public cohort alone (see [`FineTune`]): what private
    /// fine-tuning starts from, and the utility left when no private data is used.
    Public,
}

/// Private fine-tuning: pretrain the detector on a public cohort of the registry, then
/// federate only its heads (the backbone and pyramid stay frozen and public).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FineTune {
    /// A cohort of the registry with role "public".
    pub public: String,
    /// Adam steps of central pretraining on it.
    pub pretrain_steps: usize,
    /// "heads" (default) or "head-outputs" (only the heads' output layers).
    #[serde(default)]
    pub train: tessera_train::Trainable,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpGrid {
    pub mechanism: Grid<Mechanism>,
    pub epsilon: Grid<f64>,
    #[serde(default = "default_delta")]
    pub delta: f64,
    pub l2_clip: Grid<f64>,
    /// "site" (default) or "patient" (secret Poisson sampling of patients, per-patient
    /// clipping; needs `fine_tune`, the memory transport and `mechanism = "ddg"`).
    #[serde(default)]
    pub unit: PrivacyUnit,
    /// Unit "patient": each patient's probability of being sampled in a round.
    pub sampling_rate: Option<f64>,
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
    pub protocol: Option<Grid<ArmProtocol>>,
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
    /// Privacy audit: this many canary sites join the federation (not a grid; needs
    /// weighting = "uniform", a secure protocol, no dropouts, the memory transport).
    pub canaries: Option<usize>,
    /// Federated and public arms: pretrain on a public cohort, federate the heads only.
    pub fine_tune: Option<FineTune>,
    /// Fixed site weights instead of sample counts, one per training hospital in
    /// registry order (the study's federated weights: 0.15, 0.10, 0.75); carried exactly
    /// as integer thousandths.
    pub site_weights: Option<Vec<f64>>,
}

/// How a federated arm aggregates: one of Tessera's protocols (updates quantised by
/// the fixed-point codec, summed exactly), or `float`, the study's FedAvg in floating
/// point (no codec, no clipping, no quantisation), so that comparing `plaintext` or
/// `secagg` with it measures what quantisation costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArmProtocol {
    Secagg,
    SecaggPlus,
    Plaintext,
    Float,
}

impl ArmProtocol {
    pub fn name(self) -> &'static str {
        match self.fl() {
            Some(p) => p.name(),
            None => "float",
        }
    }

    /// The federation protocol; `None` for float aggregation, which runs no federation.
    pub fn fl(self) -> Option<Protocol> {
        match self {
            ArmProtocol::Secagg => Some(Protocol::Secagg),
            ArmProtocol::SecaggPlus => Some(Protocol::SecaggPlus),
            ArmProtocol::Plaintext => Some(Protocol::Plaintext),
            ArmProtocol::Float => None,
        }
    }

    pub fn is_secure(self) -> bool {
        self.fl().is_some_and(|p| p.is_secure())
    }
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
    /// Training runs per arm (seeds `seed`, `seed + 1`, …); tables give mean ± SD.
    #[serde(default = "one")]
    pub seeds: usize,
    #[serde(default)]
    pub settings: Settings,
    #[serde(rename = "arm")]
    pub arms: Vec<ArmFile>,
}

fn default_seed() -> u64 {
    1
}

fn one() -> usize {
    1
}

/// A federated arm with every grid resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederatedArm {
    pub protocol: ArmProtocol,
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
    /// Canary sites of a privacy audit (0: none; absent when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub canaries: usize,
    /// Private fine-tuning of a public model's heads (absent when not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTune>,
    /// Fixed site weights in thousandths, per site (absent: sample counts or uniform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_weights: Option<Vec<u64>>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
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
    Public(FineTune),
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
    /// Training runs per arm (at least 1).
    pub seeds: usize,
    pub settings: Settings,
    pub arms: Vec<Arm>,
}

impl Experiment {
    /// The training seed of replicate `r` (0-based): the experiment's seed plus `r`, so
    /// that replicate 0 is the single-seed run.
    pub fn replicate_seed(&self, r: usize) -> u64 {
        self.seed.wrapping_add(r as u64)
    }

    /// Overrides the number of seeds (`--seeds N`); at least 1.
    pub fn with_seeds(mut self, seeds: usize) -> Result<Self, ExpError> {
        check_seeds(seeds, "--seeds")?;
        self.seeds = seeds;
        Ok(self)
    }

    /// The file of an experiment given by name (`experiments/<name>.toml`) or by path
    /// (anything ending in `.toml`).
    pub fn file_for(name_or_path: &str) -> std::path::PathBuf {
        if name_or_path.ends_with(".toml") {
            std::path::PathBuf::from(name_or_path)
        } else {
            Path::new("experiments").join(format!("{name_or_path}.toml"))
        }
    }

    /// Finds an experiment file: a path (anything ending in `.toml`) as given; a name
    /// in `./experiments/`, else in the checkout this binary was built from, so that
    /// `tessera reproduce smoke` works from any folder. An unknown name is refused with
    /// the experiments that exist.
    pub fn locate(name_or_path: &str) -> Result<std::path::PathBuf, ExpError> {
        let local = Self::file_for(name_or_path);
        if name_or_path.ends_with(".toml") || local.exists() {
            return Ok(local);
        }
        let dirs = [
            Path::new("experiments").to_path_buf(),
            checkout().join("experiments"),
        ];
        if let Some(found) = dirs
            .iter()
            .map(|d| d.join(format!("{name_or_path}.toml")))
            .find(|p| p.exists())
        {
            return Ok(found);
        }
        let mut names: Vec<String> = dirs
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .filter_map(|e| {
                let path = e.ok()?.path();
                (path.extension()? == "toml")
                    .then(|| path.file_stem()?.to_str().map(str::to_owned))?
            })
            .collect();
        names.sort();
        names.dedup();
        Err(ExpError::Config(format!(
            "unknown experiment \"{name_or_path}\": available: {} (or give a .toml path)",
            if names.is_empty() {
                "none found".into()
            } else {
                names.join(", ")
            }
        )))
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

/// The checkout this binary was built from (experiments and the registry live there).
pub fn checkout() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `path` if it exists, else the file of that name in the [`checkout`] when that
/// exists, else `path` (whose absence the caller reports).
pub fn in_checkout(path: &Path) -> std::path::PathBuf {
    if path.exists() || path.is_absolute() {
        return path.to_owned();
    }
    let there = checkout().join(path);
    if there.exists() {
        there
    } else {
        path.to_owned()
    }
}

pub(crate) fn invalid<T>(message: String) -> Result<T, ExpError> {
    Err(ExpError::Invalid(message))
}

impl ExperimentFile {
    fn resolve(self, registry: &Registry) -> Result<Experiment, ExpError> {
        if self.arms.is_empty() {
            return invalid("no [[arm]] tables: an experiment needs at least one arm".into());
        }
        check_settings(&self.settings)?;
        check_seeds(self.seeds, "seeds")?;
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
                ("canaries", arm.canaries.is_some()),
                ("site_weights", arm.site_weights.is_some()),
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
            if !matches!(arm.kind, ArmKind::Federated | ArmKind::Public) && arm.fine_tune.is_some()
            {
                return invalid(format!(
                    "{at}.fine_tune: only federated and public arms take this key"
                ));
            }
            if let Some(ft) = &arm.fine_tune {
                check_fine_tune(ft, registry, &at)?;
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
                ArmKind::Public => {
                    let Some(ft) = &arm.fine_tune else {
                        return invalid(format!(
                            "{at}.fine_tune: missing (the public cohort and pretraining steps)"
                        ));
                    };
                    vec![Arm::simple(&arm.name, ArmPlan::Public(ft.clone()))]
                }
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
            seeds: self.seeds,
            settings: self.settings,
            arms,
        })
    }
}

fn check_fine_tune(ft: &FineTune, registry: &Registry, at: &str) -> Result<(), ExpError> {
    let public: Vec<&str> = registry
        .cohorts
        .iter()
        .filter(|c| c.role == Role::Public)
        .map(|c| c.id.as_str())
        .collect();
    if !public.contains(&ft.public.as_str()) {
        return invalid(format!(
            "{at}.fine_tune.public = \"{}\" is not a public cohort of the registry ({})",
            ft.public,
            if public.is_empty() {
                "it has none".to_string()
            } else {
                public.join(", ")
            }
        ));
    }
    if ft.pretrain_steps == 0 {
        return invalid(format!(
            "{at}.fine_tune.pretrain_steps = 0: pretrain at least one step"
        ));
    }
    Ok(())
}
