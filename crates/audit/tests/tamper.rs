//! An honest loopback federation audits clean; every kind of tampering with what its
//! sites recorded is found, by a finding that names the check.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera_audit::{Inputs, SiteAudit, audit, chi_square_p};
use tessera_core::seed::RootSeed;
use tessera_fl::wire::{self, ToCoordinator};
use tessera_fl::{FederationConfig, KnownUpdateTrainer};
use tessera_net::pki::load_identity;
use tessera_net::transcript::{Durability, Entry, OpenFacts, Record, RoundFacts, TranscriptWriter};
use tessera_secagg::{
    Body, Envelope, Header, MaskedUpload, MaskedVector, Modulus, PROTOCOL_VERSION, Party, Phase,
    PlainVector, Round, SessionId, SiteId,
};

const DIM: usize = 2000;
const SITES: usize = 3;

/// Runs three rounds between three sites over QUIC on 127.0.0.1, once per test binary.
fn honest_run() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tessera-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let config = FederationConfig::builder([5; 16], dir.join("checkpoint.bin"))
                .build()
                .unwrap();
            let trainers: Vec<_> = (0..SITES)
                .map(|i| KnownUpdateTrainer::new(DIM, 0.01 * (i as f32 + 1.0), 1).unwrap())
                .collect();
            let layout = KnownUpdateTrainer::layout_for(DIM).unwrap();
            // Round 2: site 2 drops out before masking; round 3: sites 1 and 2 leave
            // at once and the round aborts; round 4 is whole again.
            let mut dropouts = tessera_fl::memory::Dropouts::new();
            dropouts.insert(
                SiteId(2),
                [(2, Phase::MaskedInput), (3, Phase::AdvertiseKeys)].into(),
            );
            dropouts.insert(SiteId(1), [(3, Phase::AdvertiseKeys)].into());
            let mut fed = tessera_fl::loopback::start(
                config,
                layout,
                vec![0.0; DIM],
                trainers,
                &dropouts,
                &dir,
                RootSeed::from_experiment(3),
            )
            .await
            .unwrap();
            let mut completed = Vec::new();
            for _ in 0..4 {
                completed.push(fed.coordinator.run_round().await.unwrap().completed());
            }
            assert_eq!(completed, [true, true, false, true]);
            fed.shutdown().await.unwrap();
        });
        dir
    })
    .clone()
}

fn transcript(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("site-{i}.transcript"))
}

fn inputs(dir: &Path, transcripts: Vec<PathBuf>) -> Inputs {
    Inputs {
        pki: dir.join("pki"),
        policy: None,
        receipts: Some(dir.join("checkpoint.receipts.json")),
        transcripts,
    }
}

fn checks(sites: &[SiteAudit]) -> Vec<&'static str> {
    sites
        .iter()
        .flat_map(|s| s.findings.iter().map(|f| f.check))
        .collect()
}

/// A copy of site `i`'s transcript in a scratch folder, lines changed by `edit`.
fn tampered(name: &str, i: usize, edit: impl FnOnce(&mut Vec<String>)) -> (PathBuf, Vec<PathBuf>) {
    let dir = honest_run();
    let scratch = dir.join(format!("tamper-{name}"));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut lines: Vec<String> = std::fs::read_to_string(transcript(&dir, i))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    edit(&mut lines);
    let path = scratch.join(format!("site-{i}.transcript"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (dir, vec![path])
}

/// Honest runs with a dropout and an aborted round audit clean, every record anchored.
#[test]
fn an_honest_federation_audits_clean() {
    let dir = honest_run();
    let all: Vec<PathBuf> = (0..SITES).map(|i| transcript(&dir, i)).collect();
    let sites = audit(&inputs(&dir, all)).unwrap();
    assert_eq!(checks(&sites), Vec::<&str>::new(), "{sites:#?}");
    for s in &sites {
        assert_eq!(s.rounds.len(), 4);
        assert!(s.receipts >= 3, "{s:#?}");
        assert_eq!(s.unanchored, 0, "{s:#?}");
    }
    let masked = |i: usize| sites[i].bytes_by_kind["masked-input"].0;
    assert_eq!((masked(0), masked(1), masked(2)), (3, 3, 2));
    assert_eq!(sites[2].bytes_by_kind["withdraw"].0, 2);
}

type Edit = Box<dyn FnOnce(&mut Vec<String>)>;

#[test]
fn flipped_reordered_duplicated_deleted_and_foreign_records_break_the_chain() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "flip",
            Box::new(|l| l[3] = l[3].replacen("\"round\":1", "\"round\":7", 1)),
        ),
        ("reorder", Box::new(|l| l.swap(2, 3))),
        ("duplicate", Box::new(|l| l.insert(3, l[3].clone()))),
        ("delete", Box::new(|l| drop(l.remove(4)))),
    ];
    for (name, edit) in cases {
        let (dir, t) = tampered(name, 0, edit);
        assert_eq!(
            checks(&audit(&inputs(&dir, t)).unwrap()),
            vec!["chain"],
            "{name}"
        );
    }
    // A record of site 1 spliced into site 0's transcript.
    let dir = honest_run();
    let other: Vec<String> = std::fs::read_to_string(transcript(&dir, 1))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let (dir, t) = tampered("foreign", 0, |l| l[3] = other[3].clone());
    assert_eq!(checks(&audit(&inputs(&dir, t)).unwrap()), vec!["chain"]);
}

/// Cutting the tail below the coordinator's latest receipt is caught with the
/// coordinator's receipts file (and not without it: a shorter chain is a valid chain).
#[test]
fn a_truncated_transcript_is_caught_by_the_receipts() {
    let (dir, t) = tampered("truncate", 0, |l| l.truncate(6));
    let found = audit(&inputs(&dir, t.clone())).unwrap();
    assert_eq!(checks(&found), vec!["anchor"], "{found:#?}");
    let blind = Inputs {
        receipts: None,
        ..inputs(&dir, t)
    };
    assert_eq!(checks(&audit(&blind).unwrap()), Vec::<&str>::new());
}

/// Rewrites site `i`'s transcript, re-signed with its own key, through `edit` applied
/// to each entry (returning the entries to write instead).
fn resigned(name: &str, i: usize, mut edit: impl FnMut(Entry) -> Vec<Entry>) -> (PathBuf, PathBuf) {
    let dir = honest_run();
    let scratch = dir.join(format!("resign-{name}"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let identity = Arc::new(load_identity(&dir.join(format!("pki/site-{i}.identity"))).unwrap());
    let text = std::fs::read_to_string(transcript(&dir, i)).unwrap();
    let records: Vec<Record> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let Entry::Open(open) = records[0].entry.clone() else {
        panic!("no open record")
    };
    let path = scratch.join(format!("site-{i}.transcript"));
    let mut w = TranscriptWriter::open(
        &path,
        identity,
        edit_open(open, &mut edit),
        Durability::Synced,
    )
    .unwrap();
    for r in &records[1..] {
        for e in edit(r.entry.clone()) {
            match e {
                Entry::Round(f) => drop(w.round(f).unwrap()),
                Entry::Message {
                    session,
                    round,
                    kind,
                    phase,
                    size,
                    ..
                } => drop(
                    w.message(&session, round, &kind, &phase, &vec![0u8; size as usize])
                        .unwrap(),
                ),
                Entry::Refusal {
                    session,
                    round,
                    key,
                    reason,
                } => drop(w.refusal(&session, round, &key, &reason).unwrap()),
                Entry::Receipt(_) | Entry::Open(_) => {}
            }
        }
    }
    (dir, path)
}

fn edit_open(open: OpenFacts, edit: &mut impl FnMut(Entry) -> Vec<Entry>) -> OpenFacts {
    match edit(Entry::Open(open.clone())).pop() {
        Some(Entry::Open(o)) => o,
        _ => open,
    }
}

fn audit_one(dir: &Path, path: PathBuf) -> Vec<SiteAudit> {
    audit(&Inputs {
        receipts: None,
        ..inputs(dir, vec![path])
    })
    .unwrap()
}

#[test]
fn a_plain_update_under_a_secure_policy_and_a_wrong_size_are_found() {
    let (dir, path) = resigned("plain", 0, |e| match e {
        Entry::Message { kind, round, .. } if kind == "masked-input" => vec![plain_update(round)],
        other => vec![other],
    });
    let found = audit_one(&dir, path);
    assert!(checks(&found).contains(&"policy"), "{found:#?}");
    // A masked input eight bytes longer than its round implies (the range allows only
    // the few bytes of an accusation list).
    let (dir, path) = resigned("size", 0, |e| match e {
        Entry::Message {
            session,
            round,
            kind,
            phase,
            size,
            sha256,
        } if kind == "masked-input" => vec![Entry::Message {
            session,
            round,
            kind,
            phase,
            size: size + 8,
            sha256,
        }],
        other => vec![other],
    });
    let found = audit_one(&dir, path);
    assert_eq!(checks(&found), vec!["size"; 3], "{found:#?}");
}

/// A plaintext update of `round` (session `[5; 16]`, as in the honest run).
fn plain_update(round: u64) -> Entry {
    Entry::Message {
        session: "05".repeat(16),
        round,
        kind: "plain-update".into(),
        phase: "plaintext".into(),
        size: 10,
        sha256: String::new(),
    }
}

/// Site 1 recorded another context digest for round 2 than sites 0 and 2: a split view,
/// reported on every site whose view differs from another's.
#[test]
fn different_context_digests_for_one_round_are_found_across_sites() {
    let (dir, path) = resigned("context", 1, |e| match e {
        Entry::Round(RoundFacts { round: 2, .. }) => {
            let Entry::Round(mut f) = e else {
                unreachable!()
            };
            f.context = "ff".repeat(32);
            vec![Entry::Round(f)]
        }
        other => vec![other],
    });
    let all = vec![transcript(&dir, 0), path, transcript(&dir, 2)];
    let found = audit(&Inputs {
        receipts: None,
        ..inputs(&dir, all)
    })
    .unwrap();
    assert_eq!(checks(&found), vec!["context"; 3], "{found:#?}");
    assert!(found[1].findings[0].message.contains("round 2"));
}

/// A retained upload is tested for uniformity: masked values pass, zeros (structured
/// data standing in for a plaintext update) fail, and the p-values say so.
#[test]
fn retained_uploads_are_tested_for_uniformity() {
    let dir = honest_run();
    let mut facts = None;
    let (_, path) = resigned("keep", 0, |e| match e {
        Entry::Open(mut o) => {
            o.keep_payloads = true;
            vec![Entry::Open(o)]
        }
        Entry::Round(f) => {
            facts.get_or_insert(f.clone());
            vec![Entry::Round(f)]
        }
        other => vec![other],
    });
    let facts = facts.unwrap();
    // Replace the recorded uploads' payloads: the first real-looking (uniform), the
    // rest zeros. Each file must hash to its record, so the transcript is rewritten.
    let identity = Arc::new(load_identity(&dir.join("pki/site-0.identity")).unwrap());
    let keep = path.with_file_name("kept.transcript");
    let _ = std::fs::remove_file(&keep);
    let mut w = TranscriptWriter::open(
        &keep,
        identity,
        OpenFacts {
            format: tessera_net::transcript::FORMAT,
            site: 0,
            roster_version: 0,
            roster_sha256: "0".repeat(64),
            policy_sha256: "0".repeat(64),
            keep_payloads: true,
        },
        Durability::Synced,
    )
    .unwrap();
    w.round(facts.clone()).unwrap();
    let payloads = PathBuf::from(format!("{}.payloads", keep.display()));
    std::fs::create_dir_all(&payloads).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u32
    };
    for uniform in [true, false] {
        let bits = facts.modulus_bits;
        let mask = if bits == 32 {
            u32::MAX
        } else {
            (1 << bits) - 1
        };
        let words: Vec<u32> = (0..facts.vector_len)
            .map(|_| if uniform { random() & mask } else { 0 })
            .collect();
        let bytes = masked_input(&facts, words);
        let r = w
            .message(
                &facts.session,
                facts.round,
                "masked-input",
                "masked-input",
                &bytes,
            )
            .unwrap();
        std::fs::write(payloads.join(format!("{}.bin", r.seq)), &bytes).unwrap();
    }
    drop(w);
    let found = audit_one(&dir, keep);
    let u = &found[0].uniformity;
    assert_eq!(u.len(), 2, "{found:#?}");
    assert!(u[0].p_value > 1e-3 && u[1].p_value < 1e-12, "{u:?}");
    assert_eq!(checks(&found), vec!["uniformity"], "{found:#?}");
    assert!(found[0].findings[0].message.contains("not uniform"));
    // The p-value itself, against a known value: χ² = 255 with 255 df is near 0.49.
    let p = chi_square_p(255.0, 255.0);
    assert!((p - 0.49).abs() < 0.01, "{p}");
}

fn masked_input(facts: &RoundFacts, words: Vec<u32>) -> Vec<u8> {
    let modulus = Modulus::new(facts.modulus_bits).unwrap();
    let plain = PlainVector::new(modulus, words);
    let vector: MaskedVector =
        postcard::from_bytes(&postcard::to_allocvec(&plain).unwrap()).unwrap();
    let env = Envelope {
        header: Header {
            version: PROTOCOL_VERSION,
            session: SessionId(tessera_fl::parse_session(&facts.session).unwrap()),
            round: Round(facts.round),
            sender: Party::Site(SiteId(0)),
            recipient: Party::Aggregator,
        },
        body: Body::MaskedInput(MaskedUpload {
            vector,
            accused: vec![],
        }),
    };
    wire::encode(&ToCoordinator::SecAgg(env)).unwrap()
}

/// A receipts file whose signatures are not the coordinator's is reported.
#[test]
fn a_forged_receipt_is_found() {
    let dir = honest_run();
    let text = std::fs::read_to_string(dir.join("checkpoint.receipts.json")).unwrap();
    let mut receipts: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sig = receipts["0"]["signature"].as_str().unwrap().to_string();
    let flipped = if sig.ends_with('0') { "1" } else { "0" };
    receipts["0"]["signature"] = format!("{}{flipped}", &sig[..sig.len() - 1]).into();
    let forged = dir.join("forged.receipts.json");
    std::fs::write(&forged, serde_json::to_vec(&receipts).unwrap()).unwrap();
    let found = audit(&Inputs {
        receipts: Some(forged),
        ..inputs(&dir, vec![transcript(&dir, 0)])
    })
    .unwrap();
    assert_eq!(checks(&found), vec!["anchor"], "{found:#?}");
    assert!(
        found[0].findings[0]
            .message
            .contains("not the coordinator's")
    );
}

/// A site that crashed mid-write and restarted: the torn line is kept aside, the
/// transcript continues, and the audit stays clean.
#[test]
fn a_crash_mid_write_and_a_restart_audit_clean() {
    let dir = honest_run();
    let scratch = dir.join("crash");
    std::fs::create_dir_all(&scratch).unwrap();
    let path = scratch.join("site-0.transcript");
    let mut bytes = std::fs::read(transcript(&dir, 0)).unwrap();
    bytes.extend_from_slice(br#"{"seq":99,"prev":"00"#);
    std::fs::write(&path, &bytes).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let first: Record = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let Entry::Open(open) = first.entry else {
        panic!("no open record")
    };
    let identity = Arc::new(load_identity(&dir.join("pki/site-0.identity")).unwrap());
    let w = TranscriptWriter::open(&path, identity, open, Durability::Synced).unwrap();
    assert!(w.torn().is_some_and(|t| t.exists()));
    drop(w);
    let found = audit(&inputs(&dir, vec![path])).unwrap();
    assert_eq!(checks(&found), Vec::<&str>::new(), "{found:#?}");
}

/// The privacy check recomputes ε from the per-round ρ a site recorded: a ledger that
/// understates ε is found, and so are rounds past the policy's budget and noise below
/// its floor.
#[test]
fn an_understated_epsilon_a_spent_budget_and_too_little_noise_are_found() {
    use tessera_net::transcript::DpCharge;
    let delta = 1e-5;
    let mut rhos = Vec::new();
    let (dir, path) = resigned("privacy", 0, |e| match e {
        Entry::Round(mut f) => {
            rhos.push(0.05);
            let eps = tessera_dp::accounting::epsilon(&rhos, delta).unwrap();
            f.dp = Some(DpCharge {
                mechanism: "ddg".into(),
                noise: 10.0,
                noise_per_clip: 0.5,
                guaranteed_contributors: 2,
                rho: 0.05,
                // Round 4 claims half the ε it spent.
                epsilon_after: if f.round == 4 { eps / 2.0 } else { eps },
                delta,
                sampling_rate: 1.0,
            });
            vec![Entry::Round(f)]
        }
        other => vec![other],
    });
    let three = tessera_dp::accounting::epsilon(&[0.05; 3], delta).unwrap();
    let policy = dir.join("privacy-policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[policy]\nrequire_secure = false\nprotocols = [\"secagg\"]\nmin_sites = 2\n\
             require_mechanism = \"ddg\"\nmin_noise_per_clip = 1.0\nmax_epsilon = {three}\n"
        ),
    )
    .unwrap();
    let found = audit(&Inputs {
        receipts: None,
        policy: Some(policy),
        ..inputs(&dir, vec![path])
    })
    .unwrap();
    let privacy: Vec<&str> = found[0]
        .findings
        .iter()
        .filter(|f| f.check == "privacy")
        .map(|f| f.message.as_str())
        .collect();
    assert_eq!(privacy.len(), 6, "{found:#?}");
    assert_eq!(
        privacy
            .iter()
            .filter(|m| m.contains("below the policy"))
            .count(),
        4
    );
    assert!(
        privacy
            .iter()
            .any(|m| m.starts_with("round 4: ε after it is"))
    );
    assert!(
        privacy
            .iter()
            .any(|m| m.starts_with("round 4: ε") && m.contains("past the budget"))
    );
    // The site ran the permissive policy, not this one: that is reported too.
    assert!(checks(&found).contains(&"policy"));
}

/// Input the audit cannot read is never clean: a missing, empty or foreign file is a
/// finding naming it, and trust anchors from another CA are refused with the file named.
#[test]
fn unreadable_and_foreign_input_is_never_clean() {
    let dir = honest_run();
    let empty = dir.join("empty.transcript");
    std::fs::write(&empty, b"").unwrap();
    let not_one = dir.join("checkpoint.receipts.json");
    let missing = dir.join("missing.transcript");
    let found = audit(&inputs(
        &dir,
        vec![missing.clone(), empty.clone(), not_one.clone()],
    ))
    .unwrap();
    for (site, file) in found.iter().zip([&missing, &empty, &not_one]) {
        assert_eq!(site.findings.len(), 1, "{site:#?}");
        assert_eq!(site.findings[0].check, "chain");
        assert_eq!(&site.findings[0].file, file);
    }
    // The same PKI folder with another CA's certificate: the roster does not verify.
    let other = dir.join("other-ca");
    let _ = std::fs::remove_dir_all(&other);
    tessera_net::pki::init(&other.join("fresh")).unwrap();
    for f in ["roster.json", "coordinator.pem"] {
        std::fs::create_dir_all(&other).unwrap();
        std::fs::copy(dir.join("pki").join(f), other.join(f)).unwrap();
    }
    std::fs::copy(other.join("fresh/ca.pem"), other.join("ca.pem")).unwrap();
    let refused = audit(&Inputs {
        pki: other.clone(),
        ..inputs(&dir, vec![transcript(&dir, 0)])
    })
    .expect_err("another CA is refused");
    assert!(refused.to_string().contains("ca.pem"), "{refused}");
}
