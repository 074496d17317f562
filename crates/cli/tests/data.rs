//! `tessera data synth` and `tessera data check` end to end.

use std::process::Command;

fn tessera(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const REGISTRY: &str = r#"
seed = 3
[[cohort]]
id = "tiny"
name = "Tiny site (synthetic)"
country = "Hong Kong SAR, China"
role = "training-site"
train_patients = 1
test_patients = 1
source = { kind = "synthetic", volumes = "volumes/{id}.nii.gz", lesion_masks = "lesion_masks/{id}.nii.gz", lung_masks = "lung_masks/{id}.nii.gz" }
acquisition = { in_plane_spacing_mm = 0.8, slice_thickness_mm = 5.0, field_of_view_mm = 400, noise_hu = 20, kernel_blur_mm = 0.8, hu_scale = 1.0, hu_offset = 0 }
population = { lesion_free_share = 0.0, lesions_mean = 2.0, lesion_diameter_mm = [10, 40], consolidation_share = 0.5 }
"#;

#[test]
fn synth_then_check_then_break_a_file() {
    let dir = std::env::temp_dir().join(format!("tessera-cli-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let reg = dir.join("datasets.toml");
    std::fs::write(&reg, REGISTRY).unwrap();
    let out = dir.join("synthetic");
    let (r, o) = (reg.to_str().unwrap(), out.to_str().unwrap());

    let (ok, stdout, stderr) = tessera(&["data", "synth", "--registry", r, "--out", o]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("wrote") && stdout.contains("synthetic data"),
        "{stdout}"
    );
    let (ok, stdout, _) = tessera(&["data", "synth", "--registry", r, "--out", o]);
    assert!(ok && stdout.contains("reused"), "{stdout}");

    let (ok, stdout, stderr) = tessera(&["data", "check", "--registry", r, "--data", o]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("1 cohorts, 2 scans"), "{stdout}");

    std::fs::write(out.join("tiny/lung_masks/002.nii.gz"), b"garbage").unwrap();
    let (ok, stdout, stderr) = tessera(&["data", "check", "--registry", r, "--data", o]);
    assert!(!ok);
    assert!(stdout.contains("lung_masks/002.nii.gz"), "{stdout}");
    assert!(stderr.contains("1 problem(s)"), "{stderr}");
}

#[test]
fn an_invalid_registry_names_the_key() {
    let dir = std::env::temp_dir().join(format!("tessera-cli-badreg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let reg = dir.join("datasets.toml");
    std::fs::write(&reg, REGISTRY.replace("noise_hu = 20", "noise_hu = -5")).unwrap();
    let (ok, _, stderr) = tessera(&["data", "check", "--registry", reg.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("cohort[0] (tiny).acquisition.noise_hu = -5"),
        "{stderr}"
    );
    std::fs::write(&reg, REGISTRY.replace("seed = 3", "seed = 3\nseeds = 4")).unwrap();
    let (ok, _, stderr) = tessera(&["data", "synth", "--registry", reg.to_str().unwrap()]);
    assert!(!ok && stderr.contains("unknown field `seeds`"), "{stderr}");
}

#[test]
fn pki_init_and_issue() {
    let dir = std::env::temp_dir().join(format!("tessera-cli-pki-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let (ok, _, stderr) = tessera(&["pki", "init", "--dir", d]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = tessera(&["pki", "issue", "--dir", d, "--coordinator"]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) =
        tessera(&["pki", "issue", "--dir", d, "--site", "site-a", "--id", "0"]);
    assert!(
        ok && stdout.contains("roster.json re-signed"),
        "{stdout}{stderr}"
    );
    let (ok, _, stderr) = tessera(&["pki", "issue", "--dir", d, "--site", "site-a", "--id", "1"]);
    assert!(
        !ok && stderr.contains("site-a.pem already exists"),
        "{stderr}"
    );
    let (ok, _, stderr) = tessera(&["pki", "issue", "--dir", d, "--site", "site-b"]);
    assert!(!ok && stderr.contains("--id is required"), "{stderr}");
    for f in [
        "ca.pem",
        "ca.key",
        "coordinator.pem",
        "site-a.key",
        "site-a.identity",
        "roster.json",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
}
