//! Finding a cohort's files, loading scans, writing synthetic cohorts, and checking.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::nifti_io::{canonical_origin, read_mask, read_volume, write_ct, write_mask};
use crate::prep::estimate_lung_mask;
use crate::registry::{CohortSpec, Registry, Role, Source};
use crate::synth::{Patient, Resolution, longitudinal_scale};
use crate::volume::Scan;

/// One patient's files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatientFiles {
    pub id: String,
    pub volume: PathBuf,
    pub lesion_mask: PathBuf,
    pub lung_mask: Option<PathBuf>,
}

/// A cohort's patients, split as the registry says.
#[derive(Clone, Debug)]
pub struct CohortFiles {
    pub spec: CohortSpec,
    /// Training patients (training sites only).
    pub train: Vec<PatientFiles>,
    /// Test patients: a site's internal test split, or every external patient.
    pub test: Vec<PatientFiles>,
}

/// The folder holding a cohort's files.
pub fn cohort_dir(spec: &CohortSpec, synthetic_root: &Path) -> PathBuf {
    match &spec.source {
        Source::Synthetic { .. } => synthetic_root.join(&spec.id),
        Source::Nifti { root, .. } => root.clone(),
    }
}

fn patterns(spec: &CohortSpec) -> (&str, &str, Option<&str>) {
    match &spec.source {
        Source::Synthetic {
            volumes,
            lesion_masks,
            lung_masks,
        } => (volumes, lesion_masks, Some(lung_masks.as_str())),
        Source::Nifti {
            volumes,
            lesion_masks,
            lung_masks,
            ..
        } => (volumes, lesion_masks, lung_masks.as_deref()),
    }
}

fn fill(dir: &Path, pattern: &str, id: &str) -> PathBuf {
    dir.join(pattern.replace("{id}", id))
}

/// A file pattern under `dir`: its file-name part, and the names of the files in its folder.
pub(crate) fn pattern_files(dir: &Path, pattern: &str) -> Result<(String, Vec<String>), DataError> {
    let path = dir.join(pattern);
    let folder = path.parent().unwrap_or(dir);
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let entries = std::fs::read_dir(folder).map_err(|e| DataError::io(folder, e))?;
    let names = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    Ok((file, names))
}

/// Patient ids found by matching `pattern` against the files on disk, sorted.
fn find_ids(dir: &Path, pattern: &str) -> Result<Vec<String>, DataError> {
    let (file, names) = pattern_files(dir, pattern)?;
    let (prefix, suffix) = file.split_once("{id}").unwrap_or((&file, ""));
    let mut ids: Vec<String> = names
        .into_iter()
        .filter(|n| {
            n.len() > prefix.len() + suffix.len() && n.starts_with(prefix) && n.ends_with(suffix)
        })
        .map(|n| n[prefix.len()..n.len() - suffix.len()].to_string())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Locates every patient's files and applies the split.
pub fn locate(spec: &CohortSpec, synthetic_root: &Path) -> Result<CohortFiles, DataError> {
    let dir = cohort_dir(spec, synthetic_root);
    let (volumes, lesions, lungs) = patterns(spec);
    let ids = find_ids(&dir, volumes)?;
    if let Some(expected) = spec.expected_patients()
        && ids.len() != expected
    {
        let key = match spec.role {
            Role::TrainingSite => "train_patients + test_patients",
            Role::External | Role::Public => "patients",
        };
        return Err(DataError::PatientCount {
            cohort: spec.id.clone(),
            pattern: dir.join(volumes).display().to_string(),
            found: ids.len(),
            expected,
            key,
        });
    }
    let mut patients = Vec::with_capacity(ids.len());
    for id in ids {
        let files = PatientFiles {
            volume: fill(&dir, volumes, &id),
            lesion_mask: fill(&dir, lesions, &id),
            lung_mask: lungs.map(|l| fill(&dir, l, &id)),
            id,
        };
        if !files.lesion_mask.exists() {
            return Err(DataError::Missing {
                path: files.lesion_mask,
                cohort: spec.id.clone(),
                key: "source.lesion_masks",
            });
        }
        if let Some(l) = &files.lung_mask
            && !l.exists()
        {
            return Err(DataError::Missing {
                path: l.clone(),
                cohort: spec.id.clone(),
                key: "source.lung_masks",
            });
        }
        patients.push(files);
    }
    let train_count = match spec.role {
        Role::TrainingSite => spec.train_patients.unwrap_or(0).min(patients.len()),
        Role::Public => patients.len(),
        Role::External => 0,
    };
    let test = patients.split_off(train_count);
    Ok(CohortFiles {
        spec: spec.clone(),
        train: patients,
        test,
    })
}

/// Loads one scan: the volume and its masks on one grid, checked; the lung mask is
/// estimated (see [`estimate_lung_mask`]) when the cohort has none.
pub fn load_scan(files: &PatientFiles) -> Result<Scan, DataError> {
    let ct = read_volume(&files.volume)?;
    let ct_origin = canonical_origin(&files.volume)?;
    let check = |mask: &crate::volume::Volume<bool>, path: &Path| -> Result<(), DataError> {
        if mask.shape != ct.shape {
            return Err(DataError::ShapeMismatch {
                mask: path.to_owned(),
                mask_shape: mask.shape,
                volume: files.volume.clone(),
                volume_shape: ct.shape,
            });
        }
        if mask
            .spacing
            .iter()
            .zip(&ct.spacing)
            .any(|(a, b)| (a - b).abs() > 1e-3 * b.abs().max(1.0))
        {
            return Err(DataError::SpacingMismatch {
                mask: path.to_owned(),
                mask_spacing: mask.spacing,
                volume: files.volume.clone(),
                volume_spacing: ct.spacing,
            });
        }
        let mask_origin = canonical_origin(path)?;
        let distance_mm = mask_origin
            .iter()
            .zip(&ct_origin)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt();
        // Half the finest voxel spacing: anything more marks other anatomy.
        let tolerance = ct.spacing.iter().copied().fold(f32::MAX, f32::min) / 2.0;
        if distance_mm > tolerance {
            return Err(DataError::AffineMismatch {
                mask: path.to_owned(),
                mask_origin,
                volume: files.volume.clone(),
                volume_origin: ct_origin,
                distance_mm,
            });
        }
        Ok(())
    };
    let lesion = read_mask(&files.lesion_mask)?;
    check(&lesion, &files.lesion_mask)?;
    let (lung, lung_mask_estimated) = match &files.lung_mask {
        Some(path) => {
            let lung = read_mask(path)?;
            check(&lung, path)?;
            (lung, false)
        }
        None => (estimate_lung_mask(&ct), true),
    };
    Ok(Scan {
        id: files.id.clone(),
        ct,
        lesion,
        lung,
        lung_mask_estimated,
    })
}

/// A scan of a longitudinal series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesScan {
    pub day: u32,
    pub files: PatientFiles,
}

/// What `synthesize` wrote for one cohort; also its completion marker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CohortManifest {
    pub cohort: String,
    pub synthetic: bool,
    pub resolution: Resolution,
    /// Hash of everything that determines the files: parameters, seed, resolution.
    pub fingerprint: String,
    pub patients: Vec<String>,
    pub longitudinal: Vec<(String, Vec<SeriesScan>)>,
}

fn fingerprint(seed: u64, spec: &CohortSpec, resolution: Resolution) -> String {
    let text = format!("v3|{seed}|{resolution:?}|{spec:?}");
    // FNV-1a, 64-bit: a change detector, not a security measure.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Index of a cohort's first held-out (test) patient: after a training site's training
/// patients; every external patient; none of a public cohort's.
fn first_held_out(spec: &CohortSpec, total: usize) -> usize {
    match spec.role {
        Role::TrainingSite => spec.train_patients.unwrap_or(0),
        Role::External => 0,
        Role::Public => total,
    }
}

/// The patients (indices) a cohort's longitudinal series follow: the first of its
/// held-out ones.
fn series_patients(spec: &CohortSpec, total: usize) -> Vec<usize> {
    let Some(series) = &spec.longitudinal else {
        return Vec::new();
    };
    (first_held_out(spec, total)..total)
        .take(series.patients)
        .collect()
}

fn patient_seed(registry_seed: u64, cohort: &str, index: usize, purpose: u8) -> [u8; 32] {
    let mut rng = ChaCha20Rng::seed_from_u64(registry_seed);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in cohort.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    rng.set_stream(h ^ ((index as u64) << 8) ^ u64::from(purpose));
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    seed
}

fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), DataError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| DataError::io(path, e.into()))?;
    tessera_core::atomic::write_atomic(path, &text).map_err(|e| DataError::io(path, e))
}

/// Report of one `synthesize` run.
#[derive(Clone, Debug, Default)]
pub struct SynthReport {
    pub written: Vec<String>,
    /// Cohorts already complete with the same fingerprint (nothing recomputed).
    pub reused: Vec<String>,
}

/// Writes every synthetic cohort of the registry under `root/<cohort id>/`. Each file is
/// written atomically and each cohort's manifest last, so an interrupted run resumes:
/// finished cohorts are reused, unfinished ones are rewritten.
pub fn synthesize(
    registry: &Registry,
    root: &Path,
    resolution: Resolution,
) -> Result<SynthReport, DataError> {
    let mut report = SynthReport::default();
    for spec in registry.cohorts.iter().filter(|c| c.is_synthetic()) {
        let (Some(acq), Some(pop), Some(total)) = (
            &spec.acquisition,
            &spec.population,
            spec.expected_patients(),
        ) else {
            continue; // registry validation guarantees these for synthetic cohorts
        };
        let dir = cohort_dir(spec, root);
        let manifest_path = dir.join("manifest.json");
        let fp = fingerprint(registry.seed, spec, resolution);
        if let Ok(text) = std::fs::read_to_string(&manifest_path)
            && let Ok(old) = serde_json::from_str::<CohortManifest>(&text)
            && old.fingerprint == fp
        {
            report.reused.push(spec.id.clone());
            continue;
        }
        let _ = std::fs::remove_file(&manifest_path);
        let (vp, lp, lungp) = patterns(spec);
        let ids: Vec<String> = (1..=total).map(|i| format!("{i:03}")).collect();
        // Held-out (test) patients all have lesions, as the study's did.
        let first_test = first_held_out(spec, total);
        let mut patients: Vec<Patient> = (0..total)
            .map(|i| {
                let seed = patient_seed(registry.seed, &spec.id, i, 0);
                if i >= first_test {
                    Patient::sample_diseased(pop, seed)
                } else {
                    Patient::sample(pop, seed)
                }
            })
            .collect();
        // Series follow held-out (test) patients, with hospitalised patients' burdens.
        let chosen = series_patients(spec, total);
        if let Some(series) = &spec.longitudinal {
            for (k, &i) in chosen.iter().enumerate() {
                let seed = patient_seed(registry.seed, &spec.id, i, 250);
                let [lo, hi] = series.peak_burden;
                let share = (k as f32 + 0.5) / chosen.len() as f32;
                // Peak burden spread evenly over the range; the scan at scale 1 holds
                // about (1 / 1.25)³ of the peak.
                let burden = (lo + (hi - lo) * share) / 1.25f32.powi(3);
                patients[i] = patients[i].clone().with_burden(burden, seed);
            }
        }
        ids.par_iter()
            .zip(&patients)
            .enumerate()
            .try_for_each(|(i, (id, p))| {
                let scan = p.scan(
                    id,
                    acq,
                    resolution,
                    1.0,
                    patient_seed(registry.seed, &spec.id, i, 1),
                );
                write_ct(&fill(&dir, vp, id), &scan.ct)?;
                write_mask(&fill(&dir, lp, id), &scan.lesion)?;
                lungp.map_or(Ok(()), |l| write_mask(&fill(&dir, l, id), &scan.lung))
            })?;
        let mut longitudinal = Vec::new();
        if let Some(series) = &spec.longitudinal {
            for i in chosen {
                let scans: Vec<SeriesScan> = (0..series.scans)
                    .into_par_iter()
                    .map(|s| {
                        let day = s as u32 * series.interval_days;
                        let sid = format!("{}-day{day:02}", ids[i]);
                        let scan = patients[i].scan(
                            &sid,
                            acq,
                            resolution,
                            longitudinal_scale(s, series.scans),
                            patient_seed(registry.seed, &spec.id, i, 2 + s as u8),
                        );
                        let files = PatientFiles {
                            volume: dir.join(format!("longitudinal/volumes/{sid}.nii.gz")),
                            lesion_mask: dir
                                .join(format!("longitudinal/lesion_masks/{sid}.nii.gz")),
                            lung_mask: Some(
                                dir.join(format!("longitudinal/lung_masks/{sid}.nii.gz")),
                            ),
                            id: sid,
                        };
                        write_ct(&files.volume, &scan.ct)?;
                        write_mask(&files.lesion_mask, &scan.lesion)?;
                        if let Some(l) = &files.lung_mask {
                            write_mask(l, &scan.lung)?;
                        }
                        Ok(SeriesScan { day, files })
                    })
                    .collect::<Result<_, DataError>>()?;
                longitudinal.push((ids[i].clone(), scans));
            }
        }
        let manifest = CohortManifest {
            cohort: spec.id.clone(),
            synthetic: true,
            resolution,
            fingerprint: fp,
            patients: ids,
            longitudinal,
        };
        write_json_atomic(&manifest_path, &manifest)?;
        report.written.push(spec.id.clone());
    }
    Ok(report)
}

/// Validates every file the registry names; returns every problem found (empty: all
/// good) and the number of scans checked.
pub fn check(registry: &Registry, synthetic_root: &Path) -> (Vec<DataError>, usize) {
    let mut problems = Vec::new();
    let mut checked = 0;
    for spec in &registry.cohorts {
        match locate(spec, synthetic_root) {
            Err(e) => problems.push(e),
            Ok(files) => {
                let series: Vec<PatientFiles> = match crate::series::locate_series(&files) {
                    Ok(found) => found
                        .into_iter()
                        .flat_map(|(_, scans)| scans.into_iter().map(|s| s.files))
                        .collect(),
                    Err(e) => {
                        problems.push(e);
                        Vec::new()
                    }
                };
                let results: Vec<Result<Scan, DataError>> = files
                    .train
                    .par_iter()
                    .chain(files.test.par_iter())
                    .chain(series.par_iter())
                    .map(load_scan)
                    .collect();
                for r in results {
                    checked += 1;
                    if let Err(e) = r {
                        problems.push(e);
                    }
                }
            }
        }
    }
    (problems, checked)
}
