//! Serial scans of a NIfTI cohort (`source.series`): files named by a patient id and
//! a day, grouped per patient in day order. Series are for judging lesion burden on
//! patients the models never trained on, so a series of a training patient is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cohort::{CohortFiles, PatientFiles, SeriesScan};
use crate::error::DataError;
use crate::registry::{SeriesPatterns, Source};

fn fill(dir: &Path, pattern: &str, id: &str, day: &str) -> PathBuf {
    dir.join(pattern.replace("{id}", id).replace("{day}", day))
}

/// (id, day text) of every file in `dir` that `pattern` matches.
fn matches(dir: &Path, pattern: &str) -> Result<Vec<(String, String)>, DataError> {
    let (file, names) = crate::cohort::pattern_files(dir, pattern)?;
    let (prefix, rest) = file.split_once("{id}").unwrap_or((&file, ""));
    let (middle, suffix) = rest.split_once("{day}").unwrap_or((rest, ""));
    let mut out = Vec::new();
    for name in names {
        let Some(inner) = name
            .strip_prefix(prefix)
            .and_then(|n| n.strip_suffix(suffix))
        else {
            continue;
        };
        if let Some((id, day)) = inner.rsplit_once(middle)
            && !id.is_empty()
            && !day.is_empty()
            && day.bytes().all(|b| b.is_ascii_digit())
        {
            out.push((id.to_string(), day.to_string()));
        }
    }
    Ok(out)
}

/// The cohort's series (patient id → scans in day order); empty without
/// `source.series`. Refuses a series of a training patient and missing masks.
pub fn locate_series(files: &CohortFiles) -> Result<Vec<(String, Vec<SeriesScan>)>, DataError> {
    let Source::Nifti {
        root,
        series:
            Some(SeriesPatterns {
                volumes,
                lesion_masks,
                lung_masks,
            }),
        ..
    } = &files.spec.source
    else {
        return Ok(Vec::new());
    };
    let mut by_patient: BTreeMap<String, Vec<SeriesScan>> = BTreeMap::new();
    for (id, day_text) in matches(root, volumes)? {
        let path = fill(root, volumes, &id, &day_text);
        if files.train.iter().any(|p| p.id == id) {
            return Err(DataError::Registry {
                path,
                message: format!(
                    "a series of training patient {id} (source.series.volumes); series must follow held-out patients"
                ),
            });
        }
        let day: u32 = day_text.parse().map_err(|_| DataError::Registry {
            path: path.clone(),
            message: format!("series day \"{day_text}\" is out of range"),
        })?;
        let scan = PatientFiles {
            id: format!("{id}-day{day_text}"),
            volume: fill(root, volumes, &id, &day_text),
            lesion_mask: fill(root, lesion_masks, &id, &day_text),
            lung_mask: lung_masks.as_ref().map(|l| fill(root, l, &id, &day_text)),
        };
        for (path, key) in [
            (Some(&scan.lesion_mask), "source.series.lesion_masks"),
            (scan.lung_mask.as_ref(), "source.series.lung_masks"),
        ] {
            if let Some(path) = path
                && !path.exists()
            {
                return Err(DataError::Missing {
                    path: path.clone(),
                    cohort: files.spec.id.clone(),
                    key,
                });
            }
        }
        by_patient
            .entry(id)
            .or_default()
            .push(SeriesScan { day, files: scan });
    }
    Ok(by_patient
        .into_iter()
        .map(|(id, mut scans)| {
            scans.sort_by_key(|s| s.day);
            (id, scans)
        })
        .collect())
}
