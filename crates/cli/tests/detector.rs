//! Real sites: three `tessera site` processes train the tiny detector on their own
//! synthetic cohorts over QUIC; the coordinator evaluates each global model on an
//! external cohort it holds, logs every round and exports the final model.

mod common;

use common::{free_port, output, pki, spawn, tessera};
use std::path::{Path, PathBuf};
use std::process::Child;

fn cohort(id: &str, role: &str, offset: i32) -> String {
    format!(
        r#"
[[cohort]]
id = "{id}"
name = "{id} (synthetic)"
country = "test"
role = "{role}"
{counts}
source = {{ kind = "synthetic", volumes = "volumes/{{id}}.nii.gz", lesion_masks = "lesion_masks/{{id}}.nii.gz", lung_masks = "lung_masks/{{id}}.nii.gz" }}
acquisition = {{ in_plane_spacing_mm = 0.8, slice_thickness_mm = 5.0, field_of_view_mm = 400, noise_hu = 20, kernel_blur_mm = 0.8, hu_scale = 1.0, hu_offset = {offset} }}
population = {{ lesion_free_share = 0.0, lesions_mean = 2.0, lesion_diameter_mm = [10, 40], consolidation_share = 0.5 }}
"#,
        counts = if role == "external" {
            "patients = 1"
        } else {
            "train_patients = 1\ntest_patients = 1"
        }
    )
}

fn setup(dir: &Path, port: u16) -> PathBuf {
    let registry = format!(
        "seed = 5\n{}{}{}{}",
        cohort("hk-a", "training-site", 0),
        cohort("hk-b", "training-site", 10),
        cohort("hk-c", "training-site", -10),
        cohort("ext", "external", 5)
    );
    std::fs::write(dir.join("datasets.toml"), registry).unwrap();
    let pki_dir = dir.join("pki");
    pki(&pki_dir, &["hk-a", "hk-b", "hk-c"]);
    let pki = pki_dir;
    for site in ["hk-a", "hk-b", "hk-c"] {
        std::fs::write(
            dir.join(format!("{site}.toml")),
            format!(
                "coordinator = \"127.0.0.1:{port}\"\npki = \"{}\"\nname = \"{site}\"\ntranscript = \"{}\"\nconnect_timeout_s = 60\nmodel = {{ kind = \"detector\", profile = \"quick\" }}\ndata = {{ registry = \"{}\", cohort = \"{site}\" }}\n",
                pki.display(),
                dir.join(format!("{site}.transcript")).display(),
                dir.join("datasets.toml").display(),
            ),
        )
        .unwrap();
    }
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\npki = \"{}\"\nsites = 3\njoin_timeout_s = 120\nrounds = 2\ncheckpoint = \"{}\"\noutput = \"{}\"\nmodel = {{ kind = \"detector\", profile = \"quick\", init_seed = 1 }}\ntraining = {{ local_steps = 2, batch_size = 2, learning_rate = 0.001 }}\nevaluate = {{ registry = \"{}\", cohort = \"ext\" }}\nstrategy = \"fedavg\"\nprotocol = \"secagg\"\ndropout_rate = 0.05\ncorruption_rate = 0.0\nbits = 32\nclip = 1.0\nmax_weight = 100000\ntraining_timeout_s = 300\nphase_timeout_s = 60\n",
            pki.display(),
            dir.join("checkpoint.bin").display(),
            dir.join("out").display(),
            dir.join("datasets.toml").display(),
        ),
    )
    .unwrap();
    config
}

#[test]
fn three_sites_train_the_detector_over_quic() {
    let dir = std::env::temp_dir().join(format!("tessera-detector-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let config = setup(&dir, port);
    let coordinator = spawn(&["coordinator", "--config", config.to_str().unwrap()]);
    let sites: Vec<Child> = ["hk-a", "hk-b", "hk-c"]
        .iter()
        .map(|s| {
            spawn(&[
                "site",
                "--config",
                dir.join(format!("{s}.toml")).to_str().unwrap(),
            ])
        })
        .collect();
    let (code, out) = output(coordinator);
    assert_eq!(code, Some(0), "{out}");
    for round in 1..=2 {
        assert!(
            out.contains(&format!("round {round}: 3 of 3 sites contributed")),
            "{out}"
        );
    }
    assert!(out.contains("\"cohort\":\"ext\""), "{out}");
    for site in sites {
        let (code, text) = output(site);
        assert_eq!(code, Some(0), "{text}");
        assert!(
            text.contains("2 rounds started, 2 contributed to"),
            "{text}"
        );
    }
    // The round log: one JSON line per round, with the evaluation.
    let log = std::fs::read_to_string(dir.join("out/rounds.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["round"], 2);
    assert_eq!(lines[1]["contributors"], serde_json::json!([0, 1, 2]));
    assert!(lines[1]["bytes_to_coordinator"].as_u64().unwrap() > 0);
    assert_eq!(lines[1]["metrics"]["cohort"], "ext");
    // one duration per protocol phase, the first including local training
    assert_eq!(
        lines[1]["phases"].as_object().unwrap().len(),
        5,
        "{}",
        lines[1]
    );
    // The exported model has the detector's size (4 bytes a parameter, plus headers).
    let model = std::fs::metadata(dir.join("out/global.safetensors")).unwrap();
    assert!(model.len() > 10_000, "{}", model.len());

    // A weights file that is not a detector of the profile is refused before listening.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a model").unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "init_seed = 1",
        &format!("weights = \"{}\"", junk.display()),
    );
    let bad_coordinator = dir.join("bad-coordinator.toml");
    std::fs::write(&bad_coordinator, text).unwrap();
    let out = tessera()
        .args(["coordinator", "--config", bad_coordinator.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("junk.safetensors") && err.contains("not a"),
        "{err}"
    );

    // A site whose cohort is not in the registry refuses before connecting, naming it.
    let bad = dir.join("bad.toml");
    let text = std::fs::read_to_string(dir.join("hk-a.toml"))
        .unwrap()
        .replace("cohort = \"hk-a\"", "cohort = \"nowhere\"");
    std::fs::write(&bad, text).unwrap();
    let out = tessera()
        .args(["site", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.toml") && err.contains("nowhere"),
        "{err}"
    );
}
