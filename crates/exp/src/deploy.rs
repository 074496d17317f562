//! The tch detector in a deployment: what a real site trains on its own cohort, and
//! what the coordinator starts from, evaluates and exports. `tessera site` and
//! `tessera coordinator` use these when the config's model is `kind = "detector"`; the
//! federation itself is `tessera_fl::deploy`'s.

use std::path::{Path, PathBuf};
use tessera_core::{LocalTrainer, LocalTrainingConfig, ParamLayout};
use tessera_data::Registry;
use tessera_fl::deploy::{CohortRef, CoordinatorModel, ModelConfig, SiteFile};
use tessera_train::DetectorTrainer;

use crate::arms::{ModelPredictor, evaluate_cohort, round_config, trainer};
use crate::cohorts::{TestCohort, prepare_one};
use crate::error::ExpError;
use crate::profile::{Profile, ProfileName};
use crate::spec::Settings;

/// The run profile a config names (`quick` or `full`), with an experiment's overrides.
pub fn profile_named(name: &str, settings: Option<&toml::Table>) -> Result<Profile, ExpError> {
    let settings: Settings = match settings {
        Some(t) => toml::Value::Table(t.clone())
            .try_into()
            .map_err(|e| ExpError::Config(format!("model.settings: {e}")))?,
        None => Settings::default(),
    };
    let name = ProfileName::parse(name).ok_or_else(|| {
        ExpError::Config(format!(
            "model.profile = \"{name}\": expected \"quick\" or \"full\""
        ))
    })?;
    Ok(Profile::new(name, &settings))
}

fn detector(model: &ModelConfig) -> Result<(Profile, u64, Option<PathBuf>), ExpError> {
    match model {
        ModelConfig::Detector {
            profile,
            init_seed,
            weights,
            settings,
        } => Ok((
            profile_named(profile, settings.as_ref())?,
            *init_seed,
            weights.clone(),
        )),
        ModelConfig::KnownUpdate { .. } => {
            Err(ExpError::Config("model.kind: expected \"detector\"".into()))
        }
    }
}

/// The profile's training settings, as the coordinator sends them by default.
pub fn default_training(model: &ModelConfig) -> Result<LocalTrainingConfig, ExpError> {
    Ok(round_config(&detector(model)?.0, 0))
}

/// A registry cohort, loaded (and, if synthetic and missing, written) for `profile`.
fn cohort(
    data: &CohortRef,
    profile: &Profile,
) -> Result<(Vec<tessera_train::Example>, TestCohort), ExpError> {
    let registry = Registry::load(&data.registry).map_err(|e| ExpError::Data(e.to_string()))?;
    let root = data.data_root.clone().unwrap_or_else(|| {
        data.registry
            .parent()
            .map(|p| p.join("data"))
            .unwrap_or_else(|| PathBuf::from("data"))
    });
    prepare_one(&registry, &root, profile, &data.cohort)
}

/// The detector a site trains: its cohort's training patients, the profile's model,
/// initial weights from the config's seed. Refuses (naming the key or file) before any
/// connection is made when the cohort is missing, unreadable or has no training data.
pub fn site_trainer(cfg: &SiteFile) -> Result<DetectorTrainer, ExpError> {
    let (profile, init_seed, _) = detector(&cfg.model)?;
    let data = cfg
        .data
        .as_ref()
        .ok_or_else(|| ExpError::Config("data: required for the detector".into()))?;
    let (examples, _) = cohort(data, &profile)?;
    if examples.is_empty() {
        return Err(ExpError::Data(format!(
            "data.cohort = \"{}\": no training patients in {}",
            data.cohort,
            data.registry.display()
        )));
    }
    trainer(&profile, examples, cfg.seed.unwrap_or(init_seed), 1)
}

/// The coordinator's detector: initial weights, evaluation on a cohort it holds, and
/// the final model as safetensors (loadable with `DetectorTrainer::load`, or as the
/// `weights` of another federation). No TorchScript export yet: tracing with tch embeds
/// the weights as constants that libtorch then refuses to load.
pub struct DetectorCoordinator {
    model: ModelPredictor,
    layout: ParamLayout,
    initial: Vec<f32>,
    evaluate: Option<TestCohort>,
}

impl DetectorCoordinator {
    /// Checks the weights file against the profile (before anything listens) and
    /// prepares the evaluation cohort.
    pub fn new(model: &ModelConfig, evaluate: Option<&CohortRef>) -> Result<Self, ExpError> {
        let (profile, init_seed, weights) = detector(model)?;
        let mut t = trainer(&profile, Vec::new(), init_seed, 2)?;
        if let Some(path) = &weights {
            t.load(path).map_err(|e| {
                ExpError::Data(format!(
                    "{}: not a {} detector of this profile ({e})",
                    path.display(),
                    model_name(&profile)
                ))
            })?;
        }
        let layout = t.layout().clone();
        let initial = t.parameters();
        let evaluate = match evaluate {
            Some(data) => Some(cohort(data, &profile)?.1),
            None => None,
        };
        Ok(Self {
            model: ModelPredictor(t),
            layout,
            initial,
            evaluate,
        })
    }
}

fn model_name(profile: &Profile) -> &'static str {
    match profile.name {
        ProfileName::Quick => "quick (tiny)",
        ProfileName::Full => "full (paper)",
    }
}

impl CoordinatorModel for DetectorCoordinator {
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn initial(&self) -> Vec<f32> {
        self.initial.clone()
    }

    fn evaluate(&mut self, global: &[f32]) -> Result<Option<serde_json::Value>, String> {
        let Some(cohort) = &self.evaluate else {
            return Ok(None);
        };
        self.model
            .0
            .set_parameters(global)
            .map_err(|e| e.to_string())?;
        let evals = evaluate_cohort(&mut self.model, cohort).map_err(|e| e.to_string())?;
        let Some(eval) = evals
            .iter()
            .find(|e| e.protocol == tessera_eval::EvalProtocol::Strict)
        else {
            return Err("no strict evaluation".into());
        };
        let value = |e: &Option<tessera_eval::Estimate>| e.as_ref().map(|e| e.mean);
        Ok(Some(serde_json::json!({
            "cohort": eval.cohort,
            "protocol": "strict",
            "patients": eval.summary.patients,
            "map": value(&eval.summary.mean_average_precision),
            "sensitivity": value(&eval.summary.sensitivity),
            "precision": value(&eval.summary.precision),
            "fp_per_slice": value(&eval.summary.false_positives_per_slice),
        })))
    }

    fn export(&mut self, global: &[f32], dir: &Path) -> Result<Vec<PathBuf>, String> {
        let t = &mut self.model.0;
        t.set_parameters(global).map_err(|e| e.to_string())?;
        let weights = dir.join("global.safetensors");
        t.save(&weights).map_err(|e| e.to_string())?;
        Ok(vec![weights])
    }
}
