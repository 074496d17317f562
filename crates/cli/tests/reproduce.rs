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
    assert!(out.contains("2 training runs computed, 0 reused"), "{out}");
    assert!(out.contains("single |") && out.contains("fed |"), "{out}");
    assert!(dir.join("paper/tiny/README.md").exists());
    assert!(dir.join("runs/tiny-quick/results.csv").exists());
    let (ok, out) = tessera(&dir, &["reproduce", "tiny.toml"]);
    assert!(
        ok && out.contains("0 training runs computed, 2 reused"),
        "{out}"
    );

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
    // An unknown name lists the experiments (of the checkout, found from any folder).
    let (ok, out) = tessera(&dir, &["reproduce", "no-such-experiment"]);
    assert!(
        !ok && out.contains("unknown experiment \"no-such-experiment\": available: ")
            && out.contains("paper")
            && out.contains("smoke"),
        "{out}"
    );

    slurm_and_shard_commands(&dir);
}

/// The cluster commands as a user meets them: shards, the report from a partial run,
/// the written job scripts, and one line for a bad shard or a missing `sbatch`.
fn slurm_and_shard_commands(dir: &Path) {
    for bad in ["3/2", "0/2", "two"] {
        let (ok, out) = tessera(dir, &["reproduce", "--shard", bad, "tiny.toml"]);
        assert!(!ok && out.contains("1 ≤ K ≤ N"), "{bad}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "{out}");
    }
    let runs = ["--runs", "sharded"];
    let (ok, out) = tessera(
        dir,
        &["reproduce", "--report", runs[0], runs[1], "tiny.toml"],
    );
    assert!(!ok && out.contains("no run there yet"), "{out}");
    let (ok, out) = tessera(
        dir,
        &["reproduce", "--shard", "2/2", runs[0], runs[1], "tiny.toml"],
    );
    assert!(
        ok && out.contains("shard 2/2: 1 training runs computed"),
        "{out}"
    );
    let (ok, out) = tessera(
        dir,
        &["reproduce", "--report", runs[0], runs[1], "tiny.toml"],
    );
    assert!(
        ok && out.contains("from 1 of 2 training runs; missing: single"),
        "{out}"
    );

    let (ok, out) = tessera(
        dir,
        &[
            "reproduce",
            "--slurm",
            "--sbatch=--partition=x",
            "tiny.toml",
        ],
    );
    assert!(ok && out.contains("2 shards of 2 arms × 1 seeds"), "{out}");
    let script = std::fs::read_to_string(dir.join("runs/tiny-quick/slurm/shards.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=1-2") && script.contains("--partition=x"));
    // No sbatch on PATH: one line saying what to do, nothing submitted.
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .current_dir(dir)
        .env("PATH", dir)
        .args(["reproduce", "--slurm", "--submit", "tiny.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("sbatch not found"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

const TRANSPORTS: &str = r#"
name = "transports"
description = "one federated arm over each transport"
[settings]
rounds = 2
local_steps = 1
batch_size = 2
eval_slice_stride = 4
[[arm]]
name = "memory"
kind = "federated"
protocol = "secagg"
[[arm]]
name = "quic"
kind = "federated"
protocol = "secagg"
transport = "quic"
[[arm]]
name = "processes"
kind = "federated"
protocol = "secagg"
transport = "processes"
[[arm]]
name = "plain"
kind = "federated"
protocol = "plaintext"
"#;

/// A 2-round federated arm gives the same global model in memory, over loopback QUIC
/// and with real `tessera site` processes that prepare their own cohorts (and the
/// plaintext baseline agrees: secure aggregation is exact, and every arm of a run
/// draws the same rounding).
#[test]
fn every_transport_gives_the_same_model() {
    let dir = std::env::temp_dir().join(format!("tessera-cli-transports-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("datasets.toml"), REGISTRY).unwrap();
    std::fs::write(dir.join("transports.toml"), TRANSPORTS).unwrap();
    let (ok, out) = tessera(&dir, &["reproduce", "transports.toml"]);
    assert!(ok, "{out}");
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("runs/transports-quick/results.json")).unwrap(),
    )
    .unwrap();
    let digest = |name: &str| {
        results
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["arm"]["name"] == name)
            .and_then(|r| r["model_sha256"].as_str())
            .unwrap_or_else(|| panic!("no digest for {name}"))
            .to_string()
    };
    let memory = digest("memory");
    // every arm really federated: two rounds, both hospitals contributing to each
    for r in results.as_array().unwrap() {
        let rounds = r["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{r}");
        assert!(rounds.iter().all(|x| x["contributors"] == 2), "{r}");
    }
    assert_eq!(digest("quic"), memory);
    assert_eq!(digest("processes"), memory);
    assert_eq!(digest("plain"), memory);
    // The site processes left their transcripts and logs in the arm's folder.
    let arm_dirs: Vec<_> = std::fs::read_dir(dir.join("runs/transports-quick/arms"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        arm_dirs
            .iter()
            .any(|d| d.join("site-0.transcript").exists() && d.join("site-0.toml").exists()),
        "{arm_dirs:?}"
    );

    // processes need one site per hospital
    std::fs::write(
        dir.join("bad.toml"),
        TRANSPORTS.replace(
            "transport = \"processes\"",
            "transport = \"processes\"\nsites = 3",
        ),
    )
    .unwrap();
    let (ok, out) = tessera(&dir, &["reproduce", "bad.toml"]);
    assert!(!ok && out.contains("transport = \"processes\""), "{out}");
}
