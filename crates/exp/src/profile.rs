//! How big a run is: `quick` for two CPU cores, `full` for the study's scale.

use serde::{Deserialize, Serialize};
use tessera_data::{Resolution, SliceSpec, Window};
use tessera_train::DetectorConfig;

use crate::spec::Settings;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileName {
    Quick,
    Full,
}

impl ProfileName {
    /// The name used on the command line and in config files.
    pub fn name(self) -> &'static str {
        match self {
            ProfileName::Quick => "quick",
            ProfileName::Full => "full",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "quick" => Some(ProfileName::Quick),
            "full" => Some(ProfileName::Full),
            _ => None,
        }
    }
}

/// Model, data and schedule of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub name: ProfileName,
    pub resolution: Resolution,
    pub slices: SliceSpec,
    pub model: DetectorConfig,
    /// Federated rounds; single-site and pooled models train rounds × local_steps steps.
    pub rounds: u64,
    pub local_steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub train_negative_stride: usize,
    pub eval_slice_stride: usize,
    pub eval_patients: Option<usize>,
    /// Use a CUDA device when libtorch has one.
    pub cuda: bool,
    /// Adam's state persists across rounds at each site (and across the rounds of
    /// central training), as in the study's Keras clients. Absent from the serialised
    /// profile when off, so cached arms keep their keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_optimizer_state: bool,
}

impl Profile {
    pub fn new(name: ProfileName, settings: &Settings) -> Self {
        let base = match name {
            // Tiny detector at 128² and 2.8 mm: minutes on 2 CPU cores.
            ProfileName::Quick => Profile {
                name,
                resolution: Resolution::Small,
                slices: SliceSpec::SMALL,
                model: DetectorConfig::tiny(),
                rounds: 20,
                local_steps: 50,
                batch_size: 6,
                learning_rate: 1e-3,
                train_negative_stride: 4,
                eval_slice_stride: 2,
                eval_patients: None,
                cuda: false,
                keep_optimizer_state: false,
            },
            // The study's scale: 512² at 0.7 mm, VGG19-like backbone, 30 rounds of 100
            // steps (batch 6, Adam 1e-4). A GPU is recommended.
            ProfileName::Full => Profile {
                name,
                resolution: Resolution::Full,
                slices: SliceSpec {
                    size: 512,
                    spacing_mm: 0.7,
                    window: Window::LUNG,
                    min_box_pixels: 16,
                },
                model: DetectorConfig::paper(),
                rounds: 30,
                local_steps: 100,
                batch_size: 6,
                learning_rate: 1e-4,
                train_negative_stride: 1,
                eval_slice_stride: 1,
                eval_patients: None,
                cuda: true,
                keep_optimizer_state: false,
            },
        };
        Profile {
            rounds: settings.rounds.unwrap_or(base.rounds),
            local_steps: settings.local_steps.unwrap_or(base.local_steps),
            batch_size: settings.batch_size.unwrap_or(base.batch_size),
            learning_rate: settings.learning_rate.unwrap_or(base.learning_rate),
            train_negative_stride: settings
                .train_negative_stride
                .unwrap_or(base.train_negative_stride),
            eval_slice_stride: settings.eval_slice_stride.unwrap_or(base.eval_slice_stride),
            eval_patients: settings.eval_patients.or(base.eval_patients),
            keep_optimizer_state: settings.keep_optimizer_state.unwrap_or(false),
            model: match settings.detector {
                Some(crate::spec::DetectorChoice::Study) => {
                    DetectorConfig::study(base.model.input_size)
                }
                _ => base.model.clone(),
            },
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_train::HeadKind;

    /// `detector = "study"` swaps in the study's network at the profile's input size;
    /// without it the profile keeps its own, whose serialised form (and so every cache
    /// key) is unchanged by the new options.
    #[test]
    fn the_study_detector_is_an_option_of_either_profile() {
        let study = Settings {
            detector: Some(crate::spec::DetectorChoice::Study),
            ..Settings::default()
        };
        for name in [ProfileName::Quick, ProfileName::Full] {
            let p = Profile::new(name, &study);
            assert_eq!(p.model.head, HeadKind::Retinanet);
            assert!(!p.model.batch_norm && p.model.vgg_stem);
            assert_eq!(
                p.model.input_size,
                Profile::new(name, &Settings::default()).model.input_size
            );
        }
        let quick = Profile::new(ProfileName::Quick, &Settings::default());
        assert_eq!(quick.model.head, HeadKind::Centre);
        let json = serde_json::to_string(&quick.model).unwrap();
        assert!(
            !json.contains("head") && !json.contains("batch_norm"),
            "{json}"
        );
    }
}
