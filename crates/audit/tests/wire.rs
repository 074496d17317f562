//! Against the wire: a loopback federation runs while `dumpcap` captures its UDP
//! traffic; site 0 logs its TLS keys. `audit_wire` decrypts the capture with tshark and
//! finds every message site 0 sent in its transcript — and, when site 0 sends one
//! message past its transcript (a test-only fault hook), flags exactly that one.
//!
//! Needs `tshark` and `dumpcap` (Debian's `tshark` package; `scripts/test.sh` installs
//! it). Skipped, saying why, only where the machine refuses packet capture.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tessera_audit::wire::{WireInputs, audit_wire};
use tessera_core::seed::RootSeed;
use tessera_fl::facts::{RosterFacts, open_transcript};
use tessera_fl::{
    Coordinator, Egress, FederationConfig, KnownUpdateTrainer, SiteIdentity, SiteMachine,
    SitePolicy, accept_sites, reconnecting_link, run_site,
};
use tessera_net::pki::load_identity;
use tessera_net::quic::{Credentials, client, server};
use tessera_net::transcript::Durability;
use tessera_secagg::SiteId;

const DIM: usize = 3000;
const SITES: u32 = 3;

/// Starts `dumpcap` on the loopback interface for `port`; `Err` with the reason when
/// the machine refuses to capture.
fn start_capture(file: &Path, port: u16) -> Result<Child, String> {
    let mut child = Command::new("dumpcap")
        .args(["-i", "lo", "-f", &format!("udp port {port}"), "-w"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("dumpcap did not start ({e}): install the tshark package"))?;
    // dumpcap writes once its filter is in place: probe the port until the file grows
    // past its header (the coordinator ignores the probes).
    let header = std::fs::metadata(file).map_or(0, |m| m.len()).max(1);
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    for _ in 0..150 {
        if let Ok(Some(status)) = child.try_wait() {
            let mut said = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut said);
            }
            return Err(format!(
                "dumpcap could not capture on lo ({status}): {}",
                said.trim()
            ));
        }
        let _ = probe.send_to(b"capture probe", ("127.0.0.1", port));
        std::thread::sleep(Duration::from_millis(100));
        if std::fs::metadata(file).is_ok_and(|m| m.len() > header.max(300)) {
            return Ok(child);
        }
    }
    stop_capture(child);
    Err("dumpcap wrote nothing within 15 s".into())
}

fn stop_capture(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Runs two rounds; site 0 logs its TLS keys to `keylog` and, with `fault`, first
/// sends one message its transcript does not record. Returns site 0's address.
async fn federation(dir: &Path, keylog: &Path, fault: bool, capture: &Path) -> Option<SocketAddr> {
    let roster = tessera_fl::loopback::pki_for(dir, SITES as usize).unwrap();
    let pki = dir.join("pki");
    let identities = Arc::new(roster.identities().unwrap());
    let endpoint = server(
        ([127, 0, 0, 1], 0).into(),
        &Credentials::load(&pki, "coordinator").unwrap(),
        false,
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let dumpcap = match start_capture(capture, addr.port()) {
        Ok(child) => child,
        Err(reason) => {
            eprintln!("SKIPPED: {reason}");
            return None;
        }
    };
    let events = accept_sites(&endpoint, &roster);
    let layout = KnownUpdateTrainer::layout_for(DIM).unwrap();
    let mut site_addr = None;
    let mut sites = Vec::new();
    for i in 0..SITES {
        let name = format!("site-{i}");
        let identity = Arc::new(load_identity(&pki.join(format!("{name}.identity"))).unwrap());
        if i == 0 {
            // SAFETY: set before any thread reads it; rustls reads it when the client's
            // key log is created, just below.
            unsafe { std::env::set_var("SSLKEYLOGFILE", keylog) };
        }
        let ep = client(&Credentials::load(&pki, &name).unwrap(), i == 0).unwrap();
        if i == 0 {
            site_addr = Some(ep.local_addr().unwrap());
        }
        let transcript = open_transcript(
            &dir.join(format!("{name}.transcript")),
            identity.clone(),
            SiteId(i),
            &RosterFacts::of_file(&pki.join("roster.json"), roster.version).unwrap(),
            &SitePolicy::permissive(),
            false,
            Durability::Synced,
        )
        .unwrap();
        let who = SiteIdentity {
            id: SiteId(i),
            identity,
            roster: identities.clone(),
        };
        let machine =
            SiteMachine::new(who, layout.clone(), RootSeed::from_experiment(u64::from(i)))
                .with_policy(SitePolicy::permissive());
        let (link, _) = reconnecting_link(ep, addr, "coordinator".into(), Duration::from_secs(10));
        let (mut egress, inbox) = Egress::open(link, transcript);
        let mut trainer = KnownUpdateTrainer::new(DIM, 0.01 * (i as f32 + 1.0), 1).unwrap();
        sites.push(tokio::spawn(async move {
            if fault && i == 0 {
                egress
                    .send_unrecorded(b"bytes the transcript never saw".to_vec())
                    .await
                    .unwrap();
            }
            run_site(machine, &mut trainer, egress, inbox, None).await
        }));
    }
    let config = FederationConfig::builder([8; 16], dir.join("checkpoint.bin"))
        .build()
        .unwrap();
    let mut coordinator =
        Coordinator::new(config, identities, layout, vec![0.0; DIM], events, [0; 32])
            .unwrap()
            .with_receipts(&pki.join("coordinator.key"))
            .unwrap();
    assert_eq!(
        coordinator
            .wait_for_sites(SITES as usize, Duration::from_secs(30))
            .await,
        3
    );
    for _ in 0..2 {
        assert!(coordinator.run_round().await.unwrap().completed());
    }
    coordinator.shutdown().await.unwrap();
    for s in sites {
        s.await.unwrap().unwrap();
    }
    endpoint.close(0u32.into(), b"done");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_capture(dumpcap);
    site_addr
}

fn inputs(dir: &Path, keylog: &Path, capture: &Path, site: SocketAddr) -> WireInputs {
    WireInputs {
        capture: capture.to_owned(),
        keylog: keylog.to_owned(),
        transcript: dir.join("site-0.transcript"),
        pki: dir.join("pki"),
        site: Some(site.to_string()),
        tshark: PathBuf::from("tshark"),
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-wire-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Both scenarios in one test: the key log is chosen through a process-wide variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_a_site_sends_is_in_its_transcript_and_one_that_is_not_is_found() {
    Command::new("tshark")
        .arg("-v")
        .output()
        .expect("tshark is missing: install Debian's tshark package (scripts/test.sh does)");

    let dir = scratch("honest");
    let (keylog, capture) = (dir.join("site-0.keys"), dir.join("capture.pcapng"));
    let Some(site) = federation(&dir, &keylog, false, &capture).await else {
        return;
    };
    let honest = audit_wire(&inputs(&dir, &keylog, &capture, site)).unwrap();
    assert!(honest.findings.is_empty(), "{honest:#?}");
    assert_eq!(honest.undecrypted, 0);
    // Two rounds: five protocol messages and a transcript head each, all matched.
    assert_eq!((honest.messages, honest.matched), (12, 12), "{honest:#?}");
    assert_eq!(honest.recorded_not_seen, 0);
    assert_eq!(honest.connections.iter().filter(|c| c.covered).count(), 1);

    let dir = scratch("fault");
    let (keylog, capture) = (dir.join("site-0.keys"), dir.join("capture.pcapng"));
    let site = federation(&dir, &keylog, true, &capture).await.unwrap();
    let leaky = audit_wire(&inputs(&dir, &keylog, &capture, site)).unwrap();
    assert_eq!(leaky.findings.len(), 1, "{leaky:#?}");
    assert!(
        leaky.findings[0]
            .message
            .contains("a message of 30 bytes (SHA-256"),
        "{leaky:#?}"
    );
    assert_eq!((leaky.messages, leaky.matched), (13, 12));

    // Another site's key log decrypts none of site 0's connections.
    let other = WireInputs {
        keylog: dir.join("absent.keys"),
        ..inputs(&dir, &keylog, &capture, site)
    };
    assert!(audit_wire(&other).is_err(), "a missing key log is an error");
}
