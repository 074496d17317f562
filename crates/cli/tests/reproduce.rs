//! `tessera reproduce` end to end on a tiny registry: a run, its cached rerun, and a
//! bad experiment file.

use std::path::Path;
use std::process::Command;

fn tessera(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run tessera");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const REGISTRY: &str = r#"
seed = 9
[[cohort]]
id = "site-a"
name = "Site A (synthetic)"
country = "test"
role = "training-site"
train_patients = 1
test_patients = 1
source = { kind = "synthetic", volumes = "volumes/{id}.nii.gz", lesion_masks = "lesion_masks/{id}.nii.gz", lung_masks = "lung_masks/{id}.nii.gz" }
acquisition = { in_plane_spacing_mm = 0.8, slice_thickness_mm = 5.0, field_of_view_mm = 400, noise_hu = 20, kernel_blur_mm = 0.8, hu_scale = 1.0, hu_offset = 0 }
population = { lesion_free_share = 0.0, lesions_mean = 2.0, lesion_diameter_mm = [10, 40], consolidation_share = 0.5 }

[[cohort]]
id = "site-b"
name = "Site B (synthetic)"
country = "test"
role = "training-site"
train_patients = 1
test_patients = 1
source = { kind = "synthetic", volumes = "volumes/{id}.nii.gz", lesion_masks = "lesion_masks/{id}.nii.gz", lung_masks = "lung_masks/{id}.nii.gz" }
acquisition = { in_plane_spacing_mm = 0.7, slice_thickness_mm = 5.0, field_of_view_mm = 360, noise_hu = 30, kernel_blur_mm = 0.5, hu_scale = 1.0, hu_offset = 10 }
population = { lesion_free_share = 0.0, lesions_mean = 2.0, lesion_diameter_mm = [10, 40], consolidation_share = 0.5 }
"#;

const EXPERIMENT: &str = r#"
name = "tiny"
description = "two arms"
[settings]
rounds = 1
local_steps = 1
batch_size = 2
eval_slice_stride = 4
[[arm]]
name = "single"
kind = "single-site"
site = "site-a"
[[arm]]
name = "fed"
kind = "federated"
protocol = "secagg-plus"
"#;

#[test]
fn reproduce_runs_caches_and_rejects_bad_files() {
    let dir = std::env::temp_dir().join(format!("tessera-cli-reproduce-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("datasets.toml"), REGISTRY).unwrap();
    std::fs::write(dir.join("tiny.toml"), EXPERIMENT).unwrap();
    let (ok, out) = tessera(&dir, &["reproduce", "tiny.toml"]);
    assert!(ok, "{out}");
    assert!(out.contains("2 arms computed, 0 reused"), "{out}");
    assert!(out.contains("single |") && out.contains("fed |"), "{out}");
    assert!(dir.join("paper/tiny/README.md").exists());
    assert!(dir.join("runs/tiny-quick/results.csv").exists());
    let (ok, out) = tessera(&dir, &["reproduce", "tiny.toml"]);
    assert!(ok && out.contains("0 arms computed, 2 reused"), "{out}");

    std::fs::write(
        dir.join("bad.toml"),
        EXPERIMENT.replace("protocol = \"secagg-plus\"", "protocol = \"secagg-minus\""),
    )
    .unwrap();
    let (ok, out) = tessera(&dir, &["reproduce", "bad.toml"]);
    assert!(
        !ok && out.contains("bad.toml") && out.contains("protocol"),
        "{out}"
    );
    let (ok, out) = tessera(&dir, &["reproduce", "no-such-experiment"]);
    assert!(
        !ok && out.contains("experiments/no-such-experiment.toml"),
        "{out}"
    );
}
