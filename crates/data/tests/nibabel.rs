//! Files written by another tool (nibabel; `tests/fixtures/make_fixtures.py`): a
//! qform-only RAS CT with scl_slope 2 and scl_inter −1024, a float mask with a tiny
//! non-zero background, the same mask stored left–right flipped with an sform, and one
//! whose affine puts it 10 mm away from the CT.

use std::path::{Path, PathBuf};
use tessera_data::{DataError, PatientFiles, canonical_origin, load_scan, read_volume};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn files(lesion: &str) -> PatientFiles {
    PatientFiles {
        id: "fixture".into(),
        volume: fixture("ct_ras_qform.nii.gz"),
        lesion_mask: fixture(lesion),
        lung_mask: None,
    }
}

#[test]
fn scaling_and_orientation_of_a_qform_only_file_are_applied() {
    let ct = read_volume(&fixture("ct_ras_qform.nii.gz")).unwrap();
    // RAS voxel axes become LPS: x and y run backwards, z forwards; (z, y, x) order.
    assert_eq!(ct.shape, [4, 6, 8]);
    assert_eq!(ct.spacing, [2.5, 0.7, 0.8]);
    // Canonical (z, y, x) = (3, 0, 0) is RAS voxel (i, j, k) = (7, 5, 3): raw 753.
    assert_eq!(ct.get(3, 0, 0), 2.0 * 753.0 - 1024.0);
    assert_eq!(ct.get(0, 5, 7), 2.0 * 0.0 - 1024.0);
    // First canonical voxel: RAS voxel (7, 5, 0) at (−10 + 0.8·7, 20 + 0.7·5, 30).
    let origin = canonical_origin(&fixture("ct_ras_qform.nii.gz")).unwrap();
    for (got, want) in origin.iter().zip([-4.4, 23.5, 30.0]) {
        assert!((got - want).abs() < 1e-4, "{origin:?}");
    }
}

#[test]
fn float_and_flipped_masks_mark_the_same_voxels() {
    let float = load_scan(&files("lesion_float.nii.gz")).unwrap();
    let flipped = load_scan(&files("lesion_las.nii.gz")).unwrap();
    // 3 × 2 voxels per slice, 4 slices; the 1e-6 background is not lesion.
    assert_eq!(float.lesion.data.iter().filter(|v| **v).count(), 24);
    assert_eq!(float.lesion.data, flipped.lesion.data);
}

#[test]
fn a_mask_whose_affine_does_not_match_its_ct_is_refused() {
    let e = load_scan(&files("lesion_shifted.nii.gz")).unwrap_err();
    assert!(matches!(e, DataError::AffineMismatch { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("lesion_shifted.nii.gz")
            && text.contains("10.0 mm")
            && text.contains("affine"),
        "{text}"
    );
}

/// A NIfTI cohort with serial scans (`source.series`): found per held-out patient in
/// day order, checked by `data check`; a series of a training patient is refused.
#[test]
fn nifti_series_of_held_out_patients_are_found() {
    let dir = std::env::temp_dir().join(format!("tessera-series-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let copy = |from: &str, to: &str| {
        let to = dir.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(fixture(from), to).unwrap();
    };
    for id in ["001", "002"] {
        copy("ct_ras_qform.nii.gz", &format!("ct/{id}.nii.gz"));
        copy("lesion_float.nii.gz", &format!("mask/{id}.nii.gz"));
    }
    for day in ["0", "12", "5"] {
        copy(
            "ct_ras_qform.nii.gz",
            &format!("followup/002_day{day}.nii.gz"),
        );
        copy(
            "lesion_las.nii.gz",
            &format!("followup/002_day{day}_lesion.nii.gz"),
        );
    }
    let registry = || {
        format!(
            "seed = 1\n[[cohort]]\nid = \"site\"\nname = \"n\"\ncountry = \"c\"\nrole = \"training-site\"\n\
             train_patients = 1\ntest_patients = 1\n\
             source = {{ kind = \"nifti\", root = \"{}\", volumes = \"ct/{{id}}.nii.gz\", lesion_masks = \"mask/{{id}}.nii.gz\", \
             series = {{ volumes = \"followup/{{id}}_day{{day}}.nii.gz\", lesion_masks = \"followup/{{id}}_day{{day}}_lesion.nii.gz\" }} }}\n",
            dir.display()
        )
    };
    let path = dir.join("datasets.toml");
    std::fs::write(&path, registry()).unwrap();
    let reg = tessera_data::Registry::load(&path).unwrap();
    assert!(reg.problems().is_empty(), "{:?}", reg.problems());
    let files = tessera_data::locate(&reg.cohorts[0], &dir).unwrap();
    let series = tessera_data::locate_series(&files).unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].0, "002");
    let days: Vec<u32> = series[0].1.iter().map(|s| s.day).collect();
    assert_eq!(days, [0, 5, 12]);
    let (problems, checked) = tessera_data::check(&reg, &dir);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(checked, 5, "two patients and three serial scans");
    // 001 is a training patient: its series is refused, naming the file.
    copy("ct_ras_qform.nii.gz", "followup/001_day3.nii.gz");
    copy("lesion_las.nii.gz", "followup/001_day3_lesion.nii.gz");
    let e = tessera_data::locate_series(&files).unwrap_err().to_string();
    assert!(
        e.contains("001_day3.nii.gz") && e.contains("training patient 001"),
        "{e}"
    );
    // A pattern without {day} is refused with its key.
    let no_day = registry().replace("_day{day}.nii.gz\", lesion", ".nii.gz\", lesion");
    std::fs::write(&path, no_day).unwrap();
    let problems = tessera_data::Registry::load(&path).unwrap_err().to_string();
    assert!(
        problems.contains("source.series.volumes") && problems.contains("{day}"),
        "{problems}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
