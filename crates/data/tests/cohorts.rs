//! Synthetic cohorts end to end: written, found, split, loaded, checked, resumed, and
//! bad files reported by name.

use std::path::{Path, PathBuf};
use tessera_data::{
    DataError, Registry, Resolution, SliceSpec, Volume, check, load_scan, locate, slices,
    synthesize, write_mask,
};

const REGISTRY: &str = r#"
seed = 7

[[cohort]]
id = "site"
name = "Training site (synthetic)"
country = "Hong Kong SAR, China"
role = "training-site"
train_patients = 2
test_patients = 1
source = { kind = "synthetic", volumes = "volumes/{id}.nii.gz", lesion_masks = "lesion_masks/{id}.nii.gz", lung_masks = "lung_masks/{id}.nii.gz" }
acquisition = { in_plane_spacing_mm = 0.8, slice_thickness_mm = 5.0, field_of_view_mm = 400, noise_hu = 20, kernel_blur_mm = 0.8, hu_scale = 1.0, hu_offset = 0 }
population = { lesion_free_share = 0.0, lesions_mean = 3.0, lesion_diameter_mm = [10, 40], consolidation_share = 0.5 }
longitudinal = { patients = 1, scans = 3, interval_days = 4 }

[[cohort]]
id = "public"
name = "COVID-19-CT-Seg-like (synthetic)"
country = "not stated"
role = "external"
patients = 2
source = { kind = "synthetic", volumes = "COVID-19-CT-Seg_20cases/coronacases_org_{id}.nii.gz", lesion_masks = "Infection_Mask/coronacases_{id}.nii.gz", lung_masks = "Lung_Mask/coronacases_{id}.nii.gz" }
acquisition = { in_plane_spacing_mm = 0.75, slice_thickness_mm = 5.0, field_of_view_mm = 380, noise_hu = 30, kernel_blur_mm = 0.5, hu_scale = 1.05, hu_offset = 30 }
population = { lesion_free_share = 0.0, lesions_mean = 2.0, lesion_diameter_mm = [10, 40], consolidation_share = 0.2 }
"#;

fn workspace(name: &str) -> (PathBuf, Registry) {
    let dir = std::env::temp_dir().join(format!("tessera-cohorts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("datasets.toml");
    std::fs::write(&path, REGISTRY).unwrap();
    let reg = Registry::load(&path).unwrap();
    (dir, reg)
}

#[test]
fn synthetic_cohorts_are_written_found_split_and_loaded() {
    let (dir, reg) = workspace("roundtrip");
    let root = dir.join("synthetic");
    let report = synthesize(&reg, &root, Resolution::Small).unwrap();
    assert_eq!(report.written, vec!["site", "public"]);

    let site = locate(&reg.cohorts[0], &root).unwrap();
    assert_eq!((site.train.len(), site.test.len()), (2, 1));
    assert_eq!(site.test[0].id, "003");
    let public = locate(&reg.cohorts[1], &root).unwrap();
    assert_eq!(public.test.len(), 2);
    assert!(
        public.test[0]
            .volume
            .ends_with("COVID-19-CT-Seg_20cases/coronacases_org_001.nii.gz")
    );
    assert!(
        public.test[0]
            .lesion_mask
            .ends_with("Infection_Mask/coronacases_001.nii.gz")
    );

    let scan = load_scan(&site.train[0]).unwrap();
    assert!(!scan.lung_mask_estimated);
    assert!(scan.lesion.data.iter().any(|l| *l));
    // the stored spacing is the small-resolution grid: 4 × 0.8 mm → 400 / 125
    assert!((scan.ct.spacing[2] - 3.2).abs() < 1e-3 && (scan.ct.spacing[0] - 10.0).abs() < 1e-3);
    let samples = slices(&scan, &SliceSpec::SMALL);
    assert!(!samples.is_empty());
    assert!(samples.iter().any(|s| !s.boxes.is_empty()));
    assert!(
        samples
            .iter()
            .all(|s| s.image.len() == 3 * 128 * 128
                && s.image.iter().all(|v| (0.0..=1.0).contains(v)))
    );

    // The estimated lung mask agrees with the true one on most voxels.
    let mut no_mask = site.train[0].clone();
    no_mask.lung_mask = None;
    let estimated = load_scan(&no_mask).unwrap();
    assert!(estimated.lung_mask_estimated);
    let (mut both, mut either) = (0usize, 0usize);
    for (a, b) in estimated.lung.data.iter().zip(&scan.lung.data) {
        both += usize::from(*a && *b);
        either += usize::from(*a || *b);
    }
    let jaccard = both as f64 / either as f64;
    assert!(jaccard > 0.8, "lung mask Jaccard {jaccard}");

    // The longitudinal series is recorded in the manifest.
    let manifest: tessera_data::CohortManifest =
        serde_json::from_str(&std::fs::read_to_string(root.join("site/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest.longitudinal.len(), 1);
    let days: Vec<u32> = manifest.longitudinal[0].1.iter().map(|s| s.day).collect();
    assert_eq!(days, vec![0, 4, 8]);
    // It follows the held-out patient (003, after two training patients), with a
    // hospitalised patient's burden: a few percent of the lung at the first scan,
    // several times more at the peak.
    assert_eq!(manifest.longitudinal[0].0, "003");
    let burden = |i: usize| {
        let scan = load_scan(&manifest.longitudinal[0].1[i].files).unwrap();
        let lesion = scan.lesion.data.iter().filter(|v| **v).count() as f64;
        lesion / scan.lung.data.iter().filter(|v| **v).count() as f64
    };
    let (first, peak) = (burden(0), burden(1));
    assert!(
        first > 0.002 && peak > 3.0 * first && peak > 0.02 && peak < 0.5,
        "{first} {peak}"
    );

    let (problems, checked) = check(&reg, &root);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(checked, 5);
}

#[test]
fn synthesis_is_deterministic_and_resumes_without_recomputing() {
    let (dir, reg) = workspace("resume");
    let root = dir.join("synthetic");
    synthesize(&reg, &root, Resolution::Small).unwrap();
    let file = root.join("site/volumes/001.nii.gz");
    let first = std::fs::read(&file).unwrap();
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let again = synthesize(&reg, &root, Resolution::Small).unwrap();
    assert_eq!(again.reused, vec!["site", "public"]);
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        modified,
        "untouched"
    );
    // An interrupted cohort (no manifest) is regenerated, identically.
    std::fs::remove_file(root.join("site/manifest.json")).unwrap();
    std::fs::remove_file(&file).unwrap();
    let resumed = synthesize(&reg, &root, Resolution::Small).unwrap();
    assert_eq!(
        (resumed.written, resumed.reused),
        (vec!["site".to_string()], vec!["public".to_string()])
    );
    assert_eq!(std::fs::read(&file).unwrap(), first);
}

#[test]
fn held_out_patients_have_lesions_whatever_the_lesion_free_share() {
    let dir = std::env::temp_dir().join(format!("tessera-cohorts-sick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("datasets.toml");
    std::fs::write(
        &path,
        REGISTRY.replace("lesion_free_share = 0.0", "lesion_free_share = 1.0"),
    )
    .unwrap();
    let reg = Registry::load(&path).unwrap();
    let root = dir.join("synthetic");
    synthesize(&reg, &root, Resolution::Small).unwrap();
    let has_lesions =
        |f: &tessera_data::PatientFiles| load_scan(f).unwrap().lesion.data.iter().any(|l| *l);
    let site = locate(&reg.cohorts[0], &root).unwrap();
    // Training patients follow the population (all lesion-free here); held-out ones,
    // as in the study, all have lesions.
    assert!(site.train.iter().all(|f| !has_lesions(f)));
    assert!(site.test.iter().all(has_lesions));
    let external = locate(&reg.cohorts[1], &root).unwrap();
    assert!(external.test.iter().all(has_lesions));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn assert_names(err: &DataError, needle: &Path) {
    let text = err.to_string();
    assert!(
        text.contains(&needle.display().to_string()),
        "{text} does not name {}",
        needle.display()
    );
}

#[test]
fn check_reports_each_bad_file_by_name() {
    let (dir, reg) = workspace("bad");
    let root = dir.join("synthetic");
    synthesize(&reg, &root, Resolution::Small).unwrap();
    // a missing lesion mask
    let missing = root.join("site/lesion_masks/002.nii.gz");
    std::fs::remove_file(&missing).unwrap();
    // a lung mask on another grid
    let wrong_shape = root.join("public/Lung_Mask/coronacases_002.nii.gz");
    write_mask(
        &wrong_shape,
        &Volume::filled([4, 8, 8], [5.0, 3.0, 3.0], true),
    )
    .unwrap();
    let (problems, _) = check(&reg, &root);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(matches!(
        problems[0],
        DataError::Missing {
            key: "source.lesion_masks",
            ..
        }
    ));
    assert_names(&problems[0], &missing);
    assert!(matches!(problems[1], DataError::ShapeMismatch { .. }));
    assert_names(&problems[1], &wrong_shape);
    // a lesion mask on the volume's grid size but with another spacing
    let lesion = root.join("site/lesion_masks/001.nii.gz");
    let files = tessera_data::PatientFiles {
        id: "001".into(),
        volume: root.join("site/volumes/001.nii.gz"),
        lesion_mask: lesion.clone(),
        lung_mask: None,
    };
    let mut shifted = load_scan(&files).unwrap().lesion;
    shifted.spacing[2] *= 1.5;
    write_mask(&lesion, &shifted).unwrap();
    let err = load_scan(&files).unwrap_err();
    assert!(matches!(err, DataError::SpacingMismatch { .. }), "{err}");
    assert_names(&err, &lesion);
    // an extra volume changes the patient count, named with the key to fix
    std::fs::copy(
        root.join("public/COVID-19-CT-Seg_20cases/coronacases_org_001.nii.gz"),
        root.join("public/COVID-19-CT-Seg_20cases/coronacases_org_009.nii.gz"),
    )
    .unwrap();
    let err = locate(&reg.cohorts[1], &root).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::PatientCount {
                found: 3,
                expected: 2,
                key: "patients",
                ..
            }
        ),
        "{err}"
    );
}

/// The COVID-19-CT-Seg layout, read as real data would be: a `nifti` source whose root
/// holds the public set's folders, here without lung masks (estimated instead).
#[test]
fn a_nifti_source_with_the_public_layout_loads() {
    let (dir, reg) = workspace("nifti");
    let root = dir.join("synthetic");
    synthesize(&reg, &root, Resolution::Small).unwrap();
    let public_root = root.join("public");
    let text = format!(
        r#"
seed = 1
[[cohort]]
id = "covid19-ct-seg"
name = "COVID-19-CT-Seg"
country = "not stated"
role = "external"
source = {{ kind = "nifti", root = "{}", volumes = "COVID-19-CT-Seg_20cases/coronacases_org_{{id}}.nii.gz", lesion_masks = "Infection_Mask/coronacases_{{id}}.nii.gz" }}
"#,
        public_root.display()
    );
    let path = dir.join("real.toml");
    std::fs::write(&path, text).unwrap();
    let real = Registry::load(&path).unwrap();
    let files = locate(&real.cohorts[0], Path::new("/unused")).unwrap();
    let ids: Vec<&str> = files.test.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, vec!["001", "002"]);
    let scan = load_scan(&files.test[0]).unwrap();
    assert!(scan.lung_mask_estimated);
    assert!(scan.lung.data.iter().filter(|l| **l).count() > 1000);
    let (problems, checked) = check(&real, Path::new("/unused"));
    assert!(problems.is_empty() && checked == 2, "{problems:?}");
}
