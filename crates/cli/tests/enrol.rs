//! Key custody: every participant generates its own keys; the CA signs requests that
//! hold public halves only. A federation runs from folders set up that way, and the
//! CA's folder holds no participant's secret (it fails if `issue` is used instead).

mod common;

use common::{free_port, output, run, spawn};
use std::path::Path;

fn copy(from: &Path, to: &Path, names: &[&str]) {
    for n in names {
        std::fs::copy(from.join(n), to.join(n)).unwrap();
    }
}

#[test]
fn attack_ca_folder_holds_no_site_secret() {
    let dir = std::env::temp_dir().join(format!("tessera-enrol-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = dir.join("ca");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    run(&["pki", "init", "--dir", &s(&ca)]);
    let coordinator = dir.join("coordinator");
    run(&["pki", "request", "--dir", &s(&coordinator), "--coordinator"]);
    let req = coordinator.join("coordinator.request.json");
    run(&["pki", "sign", "--dir", &s(&ca), "--request", &s(&req)]);
    let sites = ["site-a", "site-b", "site-c"];
    for (i, site) in sites.iter().enumerate() {
        let own = dir.join(site);
        run(&["pki", "request", "--dir", &s(&own), "--site", site]);
        let req = own.join(format!("{site}.request.json"));
        run(&[
            "pki",
            "sign",
            "--dir",
            &s(&ca),
            "--request",
            &s(&req),
            "--id",
            &i.to_string(),
        ]);
        if i == 0 {
            // An older signed roster, kept for the roll-back check below.
            std::fs::copy(ca.join("roster.json"), dir.join("old-roster.json")).unwrap();
        }
    }
    // The CA's folder: its own key, certificates and the roster; no participant secret.
    for entry in std::fs::read_dir(&ca).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name == "ca.key" || !(name.ends_with(".key") || name.ends_with(".identity")),
            "{name} is in the CA's folder"
        );
    }
    // Each participant gets back its certificate, the CA's and the roster.
    copy(
        &ca,
        &coordinator,
        &["ca.pem", "roster.json", "coordinator.pem"],
    );
    for site in sites {
        copy(
            &ca,
            &dir.join(site),
            &["ca.pem", "roster.json", &format!("{site}.pem")],
        );
    }
    let port = free_port();
    let config = coordinator.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\npki = \"{}\"\nsites = 3\njoin_timeout_s = 30\nrounds = 2\ncheckpoint = \"{}\"\nmodel = {{ kind = \"known-update\", dim = 100 }}\nstrategy = \"fedavg\"\nprotocol = \"secagg\"\ndropout_rate = 0.05\ncorruption_rate = 0.0\nbits = 32\nclip = 1.0\nmax_weight = 1000\ntraining_timeout_s = 20\nphase_timeout_s = 5\n",
            s(&coordinator),
            s(&coordinator.join("checkpoint.bin"))
        ),
    )
    .unwrap();
    let c = spawn(&["coordinator", "--config", &s(&config)]);
    let children: Vec<_> = sites
        .iter()
        .map(|site| {
            let own = dir.join(site);
            let file = own.join("site.toml");
            std::fs::write(
                &file,
                format!(
                    "coordinator = \"127.0.0.1:{port}\"\npki = \"{}\"\nname = \"{site}\"\ntranscript = \"{}\"\nconnect_timeout_s = 20\nstep = 0.01\nsamples = 10\nmodel = {{ kind = \"known-update\", dim = 100 }}\n",
                    s(&own),
                    s(&own.join("egress.transcript"))
                ),
            )
            .unwrap();
            spawn(&["site", "--config", &s(&file)])
        })
        .collect();
    let (code, out) = output(c);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("round 2: 3 of 3 sites contributed"), "{out}");
    for child in children {
        let (code, out) = output(child);
        assert_eq!(code, Some(0), "{out}");
    }
    // A site that has seen the current roster refuses a rolled-back one at start.
    let own = dir.join("site-a");
    std::fs::copy(dir.join("old-roster.json"), own.join("roster.json")).unwrap();
    let (code, out) = output(spawn(&["site", "--config", &s(&own.join("site.toml"))]));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("older than version") && out.contains("rolled-back"),
        "{out}"
    );
}
