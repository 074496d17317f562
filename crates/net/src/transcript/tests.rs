use super::*;
use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use std::sync::Arc;
use tessera_secagg::IdentityKeyPair;

fn setup(name: &str) -> (PathBuf, Arc<IdentityKeyPair>) {
    let dir =
        std::env::temp_dir().join(format!("tessera-transcript-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (
        dir.join("site.transcript"),
        Arc::new(IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(
            1,
        ))),
    )
}

fn open_facts() -> OpenFacts {
    OpenFacts {
        format: FORMAT,
        site: 1,
        roster_version: 3,
        roster_sha256: "ab".repeat(32),
        policy_sha256: "cd".repeat(32),
        keep_payloads: false,
    }
}

/// open + three messages = four records.
fn write_three(path: &Path, id: &Arc<IdentityKeyPair>) {
    write_three_with(path, id, Durability::Synced);
}

fn write_three_with(path: &Path, id: &Arc<IdentityKeyPair>, durability: Durability) {
    let mut w = TranscriptWriter::open(path, id.clone(), open_facts(), durability).unwrap();
    w.message("00", 1, "advertise-keys", "advertise-keys", b"keys")
        .unwrap();
    w.message("00", 1, "masked-input", "masked-input", &[7u8; 1000])
        .unwrap();
    w.message("00", 1, "unmask-shares", "unmasking", b"shares")
        .unwrap();
}

#[test]
fn an_intact_transcript_verifies_and_resumes() {
    let (path, id) = setup("ok");
    write_three(&path, &id);
    let v = verify(&path, &id.public()).unwrap();
    assert_eq!(v.records.len(), 4);
    assert_eq!(v.bytes_by_kind()["masked-input"], (1, 1000));
    // Reopening records another `open` and continues the chain.
    let mut w =
        TranscriptWriter::open(&path, id.clone(), open_facts(), Durability::Synced).unwrap();
    assert_eq!(w.head().0, 5);
    let r = w
        .message("00", 2, "masked-input", "masked-input", b"x")
        .unwrap();
    assert_eq!(r.seq, 5);
    assert_eq!(verify(&path, &id.public()).unwrap().records.len(), 6);
}

/// Durability decides only when records reach the disk, never what they say.
#[test]
fn an_in_process_transcript_is_the_synced_one_byte_for_byte() {
    let (path, id) = setup("durability");
    write_three_with(&path, &id, Durability::Synced);
    let other = path.with_file_name("in-process.transcript");
    write_three_with(&other, &id, Durability::InProcess);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&other).unwrap()
    );
    assert_eq!(verify(&other, &id.public()).unwrap().records.len(), 4);
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn removal_reordering_editing_and_another_key_are_detected() {
    let (path, id) = setup("tamper");
    write_three(&path, &id);
    let original = lines(&path);
    let check = |ls: &[String]| {
        std::fs::write(&path, ls.join("\n") + "\n").unwrap();
        verify(&path, &id.public())
    };
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| original[i].clone());
    assert!(matches!(
        check(&[a.clone(), c.clone(), d.clone()]),
        Err(TranscriptError::Broken { seq: 2, .. })
    ));
    assert!(matches!(
        check(&[b.clone(), a.clone()]),
        Err(TranscriptError::Broken { seq: 1, .. })
    ));
    let edited = c.replace("\"size\":1000", "\"size\":10");
    assert!(matches!(
        check(&[a.clone(), b.clone(), edited, d.clone()]),
        Err(TranscriptError::Broken { seq: 2, .. })
    ));
    std::fs::write(&path, original.join("\n") + "\n").unwrap();
    let other = IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(2));
    assert!(verify(&path, &other.public()).is_err());
    // A writer refuses to continue a broken file.
    check(&[a, c]).unwrap_err();
    assert!(TranscriptWriter::open(&path, id.clone(), open_facts(), Durability::Synced).is_err());
}

/// A crash mid-write leaves a partial line: reopening keeps it aside, truncates to the
/// whole records (which still verify) and continues the chain.
#[test]
fn a_torn_tail_is_kept_aside_and_the_site_continues() {
    let (path, id) = setup("torn");
    write_three(&path, &id);
    let whole = std::fs::read(&path).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(br#"{"seq":4,"prev":"ab"#);
    std::fs::write(&path, &torn).unwrap();
    assert!(matches!(
        verify(&path, &id.public()),
        Err(TranscriptError::Malformed { line: 5, .. })
    ));
    let w = TranscriptWriter::open(&path, id.clone(), open_facts(), Durability::Synced).unwrap();
    let aside = w.torn().unwrap().to_owned();
    assert_eq!(std::fs::read(&aside).unwrap(), br#"{"seq":4,"prev":"ab"#);
    assert_eq!(aside, PathBuf::from(format!("{}.torn-4", path.display())));
    drop(w);
    let v = verify(&path, &id.public()).unwrap();
    assert_eq!(v.records.len(), 5);
    assert!(matches!(v.records[4].entry, Entry::Open(_)));
    // A whole line that does not parse is not a torn write: refused, left alone.
    let mut bad = std::fs::read(&path).unwrap();
    bad.extend_from_slice(b"junk\n");
    std::fs::write(&path, &bad).unwrap();
    assert!(TranscriptWriter::open(&path, id.clone(), open_facts(), Durability::Synced).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), bad);
}

/// Floats in a record (a round's DP charge) survive the verifier's parse and
/// re-serialisation bit for bit, so their signatures verify (serde_json's
/// `float_roundtrip`; without it some of these 200 records fail).
#[test]
fn records_with_awkward_floats_verify() {
    let (path, id) = setup("floats");
    let mut w =
        TranscriptWriter::open(&path, id.clone(), open_facts(), Durability::Synced).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 50.0
    };
    for round in 0..200 {
        let dp = DpCharge {
            mechanism: "ddg".into(),
            noise: next(),
            noise_per_clip: next(),
            guaranteed_contributors: 2,
            rho: next(),
            epsilon_after: next(),
            delta: 1e-5,
            sampling_rate: 1.0,
        };
        w.round(RoundFacts {
            session: "00".repeat(16),
            round,
            params_sha256: "0".repeat(64),
            context: "0".repeat(64),
            protocol: "secagg".into(),
            secure: true,
            participants: vec![0, 1, 2],
            threshold: 2,
            degree: None,
            vector_len: 10,
            modulus_bits: 32,
            dp: Some(dp),
        })
        .unwrap();
    }
    assert_eq!(verify(&path, &id.public()).unwrap().records.len(), 201);
}
