//! The run's data: training slices per site and patient, test slices per cohort, and
//! the longitudinal series, prepared once per run from the registry.

use rayon::prelude::*;
use std::path::Path;
use tessera_data::{
    CohortManifest, PatientFiles, Registry, Role, SliceSample, cohort_dir, load_scan, locate,
    slices, synthesize,
};
use tessera_train::Example;

use crate::error::ExpError;
use crate::profile::Profile;

/// One training patient's examples.
pub struct TrainingPatient {
    pub examples: Vec<Example>,
}

/// A training site (hospital) of the registry.
pub struct Hospital {
    pub id: String,
    pub patients: Vec<TrainingPatient>,
}

/// One test scan's prepared slices.
pub struct TestScan {
    pub patient: String,
    pub slices: Vec<SliceSample>,
    /// Slices of the whole volume the evaluation stride visits (⌈depth / stride⌉): the
    /// authors' protocol divides false positives by every slice, not the lung's.
    pub volume_slices: usize,
}

/// A cohort evaluated by every arm: a training site's internal test split or an
/// external cohort.
pub struct TestCohort {
    pub id: String,
    pub external: bool,
    pub scans: Vec<TestScan>,
}

/// A patient scanned repeatedly, in scan-date order.
pub struct Series {
    pub cohort: String,
    pub patient: String,
    pub scans: Vec<(u32, TestScan)>,
}

pub struct Cohorts {
    pub hospitals: Vec<Hospital>,
    /// Public cohorts (pretraining only; never evaluated).
    pub public: Vec<Hospital>,
    pub tests: Vec<TestCohort>,
    pub series: Vec<Series>,
}

fn data_error(e: tessera_data::DataError) -> ExpError {
    ExpError::Data(e.to_string())
}

/// The training examples of a cohort's training patients: every lesion slice, and
/// every `train_negative_stride`-th slice without.
fn training_patients(
    files: &tessera_data::CohortFiles,
    profile: &Profile,
) -> Result<Vec<TrainingPatient>, ExpError> {
    files
        .train
        .par_iter()
        .map(|p| {
            let stride = profile.train_negative_stride.max(1);
            let examples = prepare_scan(p, profile, 1)?
                .0
                .iter()
                .enumerate()
                .filter(|(i, s)| !s.boxes.is_empty() || i % stride == 0)
                .map(|(_, s)| Example::from_slice(s))
                .collect();
            Ok(TrainingPatient { examples })
        })
        .collect()
}

/// A cohort's test scans, prepared for evaluation.
fn test_scans(
    files: &tessera_data::CohortFiles,
    profile: &Profile,
) -> Result<Vec<TestScan>, ExpError> {
    let limit = profile.eval_patients.unwrap_or(usize::MAX);
    files
        .test
        .par_iter()
        .take(limit)
        .map(|p| {
            let (slices, volume_slices) = prepare_scan(p, profile, profile.eval_slice_stride)?;
            Ok(TestScan {
                patient: p.id.clone(),
                slices,
                volume_slices,
            })
        })
        .collect()
}

/// A series file of a synthetic cohort (`…/longitudinal/<kind>/<file>`) under `cohort`.
fn rebase(path: &Path, cohort: &Path) -> std::path::PathBuf {
    let tail: Vec<_> = path.components().rev().take(3).collect();
    tail.into_iter()
        .rev()
        .fold(cohort.to_path_buf(), |p, c| p.join(c))
}

/// The synthetic-data folder of a profile.
pub(crate) fn synthetic_root(data_root: &Path, profile: &Profile) -> std::path::PathBuf {
    data_root.join(match profile.resolution {
        tessera_data::Resolution::Small => "synthetic-small",
        tessera_data::Resolution::Full => "synthetic-full",
    })
}

/// One cohort of a registry, as a site or a coordinator that holds it sees it: its
/// training examples (in patient order) and its test cohort. A synthetic cohort is
/// written first if it is not there yet.
pub(crate) fn prepare_one(
    registry: &Registry,
    data_root: &Path,
    profile: &Profile,
    id: &str,
) -> Result<(Vec<Example>, TestCohort), ExpError> {
    let spec = registry
        .cohort(id)
        .ok_or_else(|| ExpError::Data(format!("cohort \"{id}\" is not in the registry")))?;
    let root = synthetic_root(data_root, profile);
    let only = Registry {
        seed: registry.seed,
        cohorts: vec![spec.clone()],
    };
    synthesize(&only, &root, profile.resolution).map_err(data_error)?;
    let files = locate(spec, &root).map_err(data_error)?;
    let examples = training_patients(&files, profile)?
        .into_iter()
        .flat_map(|p| p.examples)
        .collect();
    let test = TestCohort {
        id: spec.id.clone(),
        external: spec.role == Role::External,
        scans: test_scans(&files, profile)?,
    };
    Ok((examples, test))
}

/// A scan's lung slices (every `stride`-th) and how many slices of the whole volume
/// that stride visits.
fn prepare_scan(
    files: &PatientFiles,
    profile: &Profile,
    stride: usize,
) -> Result<(Vec<SliceSample>, usize), ExpError> {
    let scan = load_scan(files).map_err(data_error)?;
    let stride = stride.max(1);
    let depth = scan.ct.shape[0];
    let kept = slices(&scan, &profile.slices)
        .into_iter()
        .step_by(stride)
        .collect();
    Ok((kept, depth.div_ceil(stride)))
}

/// A series' scans, prepared for evaluation, with their days.
fn series_scans(
    scans: &[tessera_data::SeriesScan],
    profile: &Profile,
) -> Result<Vec<(u32, TestScan)>, ExpError> {
    scans
        .par_iter()
        .map(|s| {
            let (slices, volume_slices) =
                prepare_scan(&s.files, profile, profile.eval_slice_stride)?;
            Ok((
                s.day,
                TestScan {
                    patient: s.files.id.clone(),
                    slices,
                    volume_slices,
                },
            ))
        })
        .collect()
}

impl Cohorts {
    /// Writes the registry's synthetic cohorts under `data_root` if they are not there
    /// yet (resumable), then prepares every slice the run needs.
    pub fn prepare(
        registry: &Registry,
        data_root: &Path,
        profile: &Profile,
    ) -> Result<Self, ExpError> {
        let root = synthetic_root(data_root, profile);
        synthesize(registry, &root, profile.resolution).map_err(data_error)?;
        let mut hospitals = Vec::new();
        let mut public = Vec::new();
        let mut tests = Vec::new();
        let mut series = Vec::new();
        for spec in &registry.cohorts {
            let files = locate(spec, &root).map_err(data_error)?;
            if spec.role == Role::Public {
                public.push(Hospital {
                    id: spec.id.clone(),
                    patients: training_patients(&files, profile)?,
                });
                continue;
            }
            if spec.role == Role::TrainingSite {
                hospitals.push(Hospital {
                    id: spec.id.clone(),
                    patients: training_patients(&files, profile)?,
                });
            }
            let scans = test_scans(&files, profile)?;
            tests.push(TestCohort {
                id: spec.id.clone(),
                external: spec.role == Role::External,
                scans,
            });
            let found = if spec.is_synthetic() {
                let path = cohort_dir(spec, &root).join("manifest.json");
                let manifest: CohortManifest = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .ok_or_else(|| {
                        ExpError::Data(format!("{}: unreadable manifest", path.display()))
                    })?;
                // Paths were written under the data folder as it was given then
                // (perhaps relative to another working directory): rebase them on
                // this cohort's folder.
                let dir = cohort_dir(spec, &root);
                manifest
                    .longitudinal
                    .into_iter()
                    .map(|(patient, scans)| {
                        let scans = scans
                            .into_iter()
                            .map(|mut s| {
                                s.files.volume = rebase(&s.files.volume, &dir);
                                s.files.lesion_mask = rebase(&s.files.lesion_mask, &dir);
                                s.files.lung_mask = s.files.lung_mask.map(|l| rebase(&l, &dir));
                                s
                            })
                            .collect();
                        (patient, scans)
                    })
                    .collect()
            } else {
                tessera_data::locate_series(&files).map_err(data_error)?
            };
            for (patient, scans) in found {
                series.push(Series {
                    cohort: spec.id.clone(),
                    patient,
                    scans: series_scans(&scans, profile)?,
                });
            }
        }
        Ok(Self {
            hospitals,
            public,
            tests,
            series,
        })
    }

    /// Training examples of one hospital.
    pub fn hospital_examples(&self, id: &str) -> Vec<Example> {
        self.hospitals
            .iter()
            .filter(|h| h.id == id)
            .flat_map(|h| h.patients.iter().flat_map(|p| p.examples.iter().cloned()))
            .collect()
    }

    /// Every training example.
    pub fn all_examples(&self) -> Vec<Example> {
        self.hospitals
            .iter()
            .flat_map(|h| h.patients.iter().flat_map(|p| p.examples.iter().cloned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run from another folder with `--data` elsewhere finds the series files the
    /// manifest recorded under the data folder as it was given when written.
    #[test]
    fn series_files_are_rebased_on_the_cohort_folder() {
        let written = Path::new("data/synthetic-small/hk-c/longitudinal/volumes/046-day00.nii.gz");
        assert_eq!(
            rebase(written, Path::new("/srv/d/synthetic-small/hk-c")),
            Path::new("/srv/d/synthetic-small/hk-c/longitudinal/volumes/046-day00.nii.gz")
        );
    }
}
