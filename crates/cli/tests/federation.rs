//! A coordinator and three site processes over QUIC on loopback.

mod common;

use common::{free_port, spawn, tessera};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};
use tessera_net::pki::{SignedRoster, load_identity};
use tessera_net::transcript::verify;

const SITES: [(&str, u32, f32, u64); 3] = [
    ("site-a", 0, 0.01, 100),
    ("site-b", 1, 0.02, 200),
    ("site-c", 2, 0.03, 300),
];

fn setup(name: &str) -> (PathBuf, u16) {
    let dir =
        std::env::temp_dir().join(format!("tessera-federation-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pki = dir.join("pki");
    common::pki(&pki, &SITES.map(|(site, ..)| site));
    let port = free_port();
    for (site, _, step, samples) in SITES {
        std::fs::write(
            dir.join(format!("{site}.toml")),
            format!(
                "coordinator = \"127.0.0.1:{port}\"\npki = \"{}\"\nname = \"{site}\"\ntranscript = \"{}\"\nconnect_timeout_s = 20\nstep = {step}\nsamples = {samples}\nmodel = {{ kind = \"known-update\", dim = 1000 }}\n",
                pki.display(),
                dir.join(format!("{site}.transcript")).display()
            ),
        )
        .unwrap();
    }
    (dir, port)
}

fn coordinator_config(dir: &Path, port: u16, rounds: u64) -> PathBuf {
    let path = dir.join("federation.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\npki = \"{}\"\nsites = 3\njoin_timeout_s = 30\nrounds = {rounds}\ncheckpoint = \"{}\"\nmodel = {{ kind = \"known-update\", dim = 1000 }}\nstrategy = \"fedavg\"\nprotocol = \"secagg\"\ndropout_rate = 0.05\ncorruption_rate = 0.0\nbits = 32\nclip = 1.0\nmax_weight = 1000\ntraining_timeout_s = 20\nphase_timeout_s = 5\n",
            dir.join("pki").display(),
            dir.join("checkpoint.bin").display()
        ),
    )
    .unwrap();
    path
}

fn spawn_sites(dir: &Path) -> Vec<Child> {
    SITES
        .iter()
        .map(|(site, ..)| {
            spawn(&[
                "site",
                "--config",
                dir.join(format!("{site}.toml")).to_str().unwrap(),
            ])
        })
        .collect()
}

fn finish(child: Child, limit: Duration) -> (bool, String) {
    let start = Instant::now();
    let mut child = child;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            return (status.success(), text);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            return (
                false,
                format!("timed out: {}", String::from_utf8_lossy(&out.stdout)),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mean step per round: (0.01·100 + 0.02·200 + 0.03·300) / 600.
const ROUND_STEP: f64 = 14.0 / 600.0;

/// The global model's mean parameter printed by the coordinator, checked against
/// `rounds` rounds of updates. The model is f32: each round's addition rounds to half
/// an ulp (≤ 1.2e-7 near 2.3), so 100 rounds stay within 2e-5; the fixed-point
/// quantisation error (about 1e-11 per round here) is far below that.
fn assert_mean_after(out: &str, rounds: u64) {
    let mean: f64 = out
        .lines()
        .find_map(|l| l.split("mean parameter ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no mean parameter in {out}"));
    let expected = rounds as f64 * ROUND_STEP;
    assert!(
        (mean - expected).abs() < 2e-5,
        "mean parameter {mean}, expected {expected}: {out}"
    );
}

#[test]
fn three_site_processes_train_three_rounds_over_quic() {
    let (dir, port) = setup("rounds");
    let coordinator = spawn(&[
        "coordinator",
        "--config",
        coordinator_config(&dir, port, 3).to_str().unwrap(),
    ]);
    let sites = spawn_sites(&dir);
    let (ok, out) = finish(coordinator, Duration::from_secs(120));
    assert!(ok, "{out}");
    for round in 1..=3 {
        assert!(
            out.contains(&format!(
                "round {round}: 3 of 3 sites contributed (weight 600)"
            )),
            "{out}"
        );
    }
    assert_mean_after(&out, 3);
    for site in sites {
        let (ok, out) = finish(site, Duration::from_secs(30));
        assert!(
            ok && out.contains("3 rounds started, 3 contributed to"),
            "{out}"
        );
    }
    // Each site's transcript verifies against its key in the CA-signed roster.
    let roster = SignedRoster::load(&dir.join("pki/roster.json"), &dir.join("pki/ca.pem")).unwrap();
    assert_eq!(roster.entries.len(), 3);
    for (site, ..) in SITES {
        let key = load_identity(&dir.join(format!("pki/{site}.identity")))
            .unwrap()
            .public();
        let summary = verify(&dir.join(format!("{site}.transcript")), &key).unwrap();
        assert_eq!(summary.bytes_by_kind()["masked-input"].0, 3, "{site}");
    }
    // The auditor's command: clean (exit 0) with the coordinator's receipts, and one
    // line per finding (exit 2) for a transcript cut below its last receipt.
    let transcripts: Vec<String> = SITES
        .iter()
        .map(|(site, ..)| dir.join(format!("{site}.transcript")).display().to_string())
        .collect();
    let receipts = dir.join("checkpoint.receipts.json");
    let pki_dir = dir.join("pki");
    let audit = |files: &[String]| {
        let mut args = vec!["audit", "verify", "--pki", pki_dir.to_str().unwrap()];
        args.extend(["--receipts", receipts.to_str().unwrap()]);
        args.extend(files.iter().map(String::as_str));
        let out = tessera().args(&args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = audit(&transcripts);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches(": clean").count(), 3, "{out}");
    let cut = dir.join("cut.transcript");
    let text = std::fs::read_to_string(&transcripts[0]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&cut, lines[..lines.len() / 2].join("\n") + "\n").unwrap();
    let (code, out) = audit(&[cut.display().to_string()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("[anchor]") && out.contains("1 finding(s)"),
        "{out}"
    );
    // Restarted, the finished federation says so at once.
    let again = tessera()
        .args([
            "coordinator",
            "--config",
            coordinator_config(&dir, port, 3).to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success() && out.contains("already finished its 3 rounds"),
        "{out}"
    );
}

#[test]
fn a_private_federation_reports_its_privacy_ledger() {
    let (dir, port) = setup("private");
    let config = coordinator_config(&dir, port, 2);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("bits = 32", "bits = 24");
    std::fs::write(
        &config,
        format!("{text}[dp]\nmechanism = \"ddg\"\nepsilon = 10.0\ndelta = 1e-5\nrounds = 2\nl2_clip = 1.0\n"),
    )
    .unwrap();
    let coordinator = spawn(&["coordinator", "--config", config.to_str().unwrap()]);
    let sites = spawn_sites(&dir);
    let (ok, out) = finish(coordinator, Duration::from_secs(120));
    assert!(ok, "{out}");
    for round in 1..=2 {
        assert!(
            out.contains(&format!("round {round}: 3 of 3 sites contributed")),
            "{out}"
        );
    }
    assert!(
        out.contains("privacy: ρ") && out.contains("privacy ledger:"),
        "{out}"
    );
    let ledger = std::fs::read_to_string(dir.join("checkpoint.ledger.json")).unwrap();
    assert!(ledger.contains("\"mechanism\": \"ddg\"") && ledger.contains("cumulative_epsilon"));
    for site in sites {
        let (ok, out) = finish(site, Duration::from_secs(30));
        assert!(ok, "{out}");
    }
}

#[test]
fn a_killed_coordinator_resumes_from_its_checkpoint() {
    let (dir, port) = setup("kill");
    let rounds = 100;
    let config = coordinator_config(&dir, port, rounds);
    let mut coordinator = spawn(&["coordinator", "--config", config.to_str().unwrap()]);
    let sites = spawn_sites(&dir);
    // SIGKILL as soon as one round is checkpointed: most likely in the middle of the next.
    let checkpoint = dir.join("checkpoint.bin");
    let start = Instant::now();
    while !checkpoint.exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(checkpoint.exists(), "no round completed");
    coordinator.kill().unwrap();
    let _ = coordinator.wait();
    // Restart with the same configuration. The same site processes notice the lost
    // connection, re-dial and rejoin, appending to the same transcripts.
    let coordinator = spawn(&["coordinator", "--config", config.to_str().unwrap()]);
    let (ok, out) = finish(coordinator, Duration::from_secs(120));
    assert!(ok, "{out}");
    assert!(
        out.contains("resuming from the checkpoint at round"),
        "{out}"
    );
    // Exactly `rounds` rounds of updates: none lost, none applied twice.
    assert_mean_after(&out, rounds);
    for s in sites {
        let (ok, out) = finish(s, Duration::from_secs(30));
        assert!(ok, "{out}");
    }
    for (site, ..) in SITES {
        let key = load_identity(&dir.join(format!("pki/{site}.identity")))
            .unwrap()
            .public();
        assert!(
            verify(&dir.join(format!("{site}.transcript")), &key).is_ok(),
            "{site}"
        );
    }
}

#[test]
fn an_unreachable_coordinator_gives_an_actionable_error() {
    let (dir, _) = setup("unreachable");
    let port = free_port();
    let config = dir.join("site-a.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("coordinator =") {
                format!("coordinator = \"127.0.0.1:{port}\"")
            } else if l.starts_with("connect_timeout_s") {
                "connect_timeout_s = 1".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text).unwrap();
    let (ok, out) = finish(
        spawn(&["site", "--config", config.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(!ok);
    assert!(
        out.contains("could not reach the coordinator") && out.contains(&port.to_string()),
        "{out}"
    );
}

/// A site whose certificate comes from another CA is refused by the coordinator's TLS
/// handshake: it says so within seconds and exits 3, and the coordinator logs it.
#[test]
fn a_refused_certificate_is_reported_on_time() {
    let (dir, port) = setup("refused");
    let other = dir.join("other-pki");
    let d = other.to_str().unwrap();
    common::run(&["pki", "init", "--dir", d]);
    common::run(&["pki", "issue", "--dir", d, "--site", "site-a", "--id", "0"]);
    let config = dir.join("site-a.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            &format!("pki = \"{}\"", dir.join("pki").display()),
            &format!("pki = \"{}\"", other.display()),
        )
        .replace("connect_timeout_s = 20", "connect_timeout_s = 60");
    std::fs::write(&config, text).unwrap();
    let coordinator = spawn(&[
        "coordinator",
        "--config",
        coordinator_config(&dir, port, 1).to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let site = tessera()
        .args(["site", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let out =
        String::from_utf8_lossy(&site.stdout).into_owned() + &String::from_utf8_lossy(&site.stderr);
    assert_eq!(site.status.code(), Some(3), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}: {out}",
        start.elapsed()
    );
    assert!(out.contains("could not reach the coordinator"), "{out}");
    // The coordinator reports refusals while it waits, in slices of half a second.
    std::thread::sleep(Duration::from_secs(2));
    let mut coordinator = coordinator;
    let _ = coordinator.kill();
    let out = coordinator.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("refused a connection"), "{log}");
}

#[test]
fn coordinator_configs_name_bad_keys_and_busy_ports() {
    let (dir, port) = setup("badconfig");
    let config = coordinator_config(&dir, port, 1);
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("rounds = 1", "rounds = 1\nround = 2")).unwrap();
    let (ok, out) = finish(
        spawn(&["coordinator", "--config", config.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(!ok && out.contains("unknown field `round`"), "{out}");
    std::fs::write(&config, format!("{good}[dp]\nmechanism = \"ddg\"\nepsilon = -1.0\ndelta = 1e-5\nrounds = 3\nl2_clip = 1.0\n")).unwrap();
    let (ok, out) = finish(
        spawn(&["coordinator", "--config", config.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(!ok && out.contains("dp.epsilon = -1"), "{out}");
    // a port already taken
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().port();
    std::fs::write(
        &config,
        good.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{taken}")),
    )
    .unwrap();
    let (ok, out) = finish(
        spawn(&["coordinator", "--config", config.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(
        !ok && out.contains(&format!("cannot bind 127.0.0.1:{taken}")),
        "{out}"
    );
    // Settings no round can satisfy are refused before the port is bound: with the port
    // still taken, the error is the plan's, not the bind's.
    let text = good.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{taken}"));
    std::fs::write(
        &config,
        format!("{}[dp]\nmechanism = \"ddg\"\nepsilon = 1.0\ndelta = 1e-5\nrounds = 1000\nl2_clip = 1.0\n", text.replace("bits = 32", "bits = 8")),
    )
    .unwrap();
    let (ok, out) = finish(
        spawn(&["coordinator", "--config", config.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(
        !ok && !out.contains("cannot bind") && out.contains("differential privacy"),
        "{out}"
    );
    drop(busy);
}

/// A site whose policy the round breaks refuses it: it sends nothing, records the
/// refusal in its transcript, says which key the round broke and exits 3; the others
/// finish the round without it and persist the round they answered.
#[test]
fn a_refused_round_is_recorded_and_the_others_go_on() {
    let (dir, port) = setup("policy");
    let config = coordinator_config(&dir, port, 1);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("training_timeout_s = 20", "training_timeout_s = 3");
    std::fs::write(&config, text).unwrap();
    let site_a = dir.join("site-a.toml");
    let text = std::fs::read_to_string(&site_a).unwrap();
    std::fs::write(&site_a, format!("{text}policy = {{ min_sites = 5 }}\n")).unwrap();
    let coordinator = spawn(&["coordinator", "--config", config.to_str().unwrap()]);
    let sites = spawn_sites(&dir);
    let (ok, out) = finish(coordinator, Duration::from_secs(120));
    assert!(ok, "{out}");
    assert!(out.contains("round 1: 2 of 3 sites contributed"), "{out}");
    let mut sites = sites.into_iter();
    let (code, out) = common::output(sites.next().unwrap());
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("refused (policy.min_sites)"), "{out}");
    for s in sites {
        let (code, out) = common::output(s);
        assert_eq!(code, Some(0), "{out}");
    }
    // The refusal is in site-a's verified transcript, and nothing else is.
    let key = load_identity(&dir.join("pki/site-a.identity"))
        .unwrap()
        .public();
    let summary = verify(&dir.join("site-a.transcript"), &key).unwrap();
    let refusals: Vec<_> = summary
        .records
        .iter()
        .filter_map(|r| match &r.entry {
            tessera_net::transcript::Entry::Refusal { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(refusals, vec!["min_sites"]);
    let kinds = summary.bytes_by_kind();
    assert!(kinds.keys().all(|k| k == "head"), "{kinds:?}");
    // site-b persisted the round it answered; site-a answered none.
    let rounds = std::fs::read_to_string(dir.join("site-b.transcript.rounds.json")).unwrap();
    assert!(rounds.contains(": 1"), "{rounds}");
    assert!(!dir.join("site-a.transcript.rounds.json").exists());
}
