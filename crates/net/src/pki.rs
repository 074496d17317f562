//! The federation's PKI: a private CA, one certificate per participant, and a
//! CA-signed roster binding each site's name and id to its Ed25519 identity key.
//!
//! A folder written by `tessera pki` holds `ca.pem` and `ca.key` (the CA), and for each
//! participant `NAME.pem`, `NAME.key` (its TLS certificate and key) and, for sites,
//! `NAME.identity` (the 32-byte Ed25519 seed of its secure-aggregation identity), plus
//! `roster.json`. Secret files are written with mode 0600, every file atomically.
//!
//! Why a roster: TLS authenticates *connections*; secure aggregation needs every site to
//! verify every other site's signatures. The roster, signed by the CA, tells everyone
//! which Ed25519 key belongs to which site, so a site cannot speak as another even
//! through a misbehaving coordinator.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tessera_secagg::{IdentityKeyPair, IdentityPublicKey, SiteId};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path} already exists; refusing to overwrite (remove it to start over)")]
    Exists { path: PathBuf },
    #[error("`{0}` is not a valid participant name: use lower-case letters, digits and '-'")]
    BadName(String),
    #[error("the roster signature does not verify against the CA certificate {0}")]
    RosterSignature(PathBuf),
    #[error("certificate generation failed: {0}")]
    Certificate(String),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` via a temporary file and a rename; `secret` files are 0600.
pub fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> Result<(), PkiError> {
    if secret {
        tessera_core::atomic::write_secret(path, bytes).map_err(io(path))
    } else {
        tessera_core::atomic::write_atomic(path, bytes).map_err(io(path))
    }
}

pub(crate) fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(path))
}

pub(crate) fn cert_error(e: rcgen::Error) -> PkiError {
    PkiError::Certificate(e.to_string())
}

/// The CA's fixed parameters: issuing later only needs these and its key.
pub(crate) fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Tessera federation CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

pub(crate) fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_string()))
    }
}

/// Creates a new CA in `dir` (which must not hold one) and an empty roster.
pub fn init(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(PkiError::Exists { path: p.clone() });
        }
    }
    let key = KeyPair::generate().map_err(cert_error)?;
    let cert = ca_params()?.self_signed(&key).map_err(cert_error)?;
    write_atomic(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), false)?;
    let roster = SignedRoster::sign(Vec::new(), 1, &key)?;
    write_atomic(&dir.join("roster.json"), &roster.to_json()?, false)
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Site(SiteId),
}

/// A participant's certificate: its name, the one usage its role needs (a site is a
/// TLS client, the coordinator a server), valid from yesterday for two years.
pub(crate) fn leaf_params(name: &str, role: Role) -> Result<CertificateParams, PkiError> {
    use rcgen::ExtendedKeyUsagePurpose;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(cert_error)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![match role {
        Role::Coordinator => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Site(_) => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    let (y, m, d) = today();
    params.not_before = rcgen::date_time_ymd(y, m, d) - std::time::Duration::from_secs(86_400);
    params.not_after = rcgen::date_time_ymd(y + 2, m, d.min(28));
    Ok(params)
}

/// Today's date (UTC) from the system clock, as (year, month, day).
fn today() -> (i32, u8, u8) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// Issues a certificate (and, for a site, an identity key and a roster entry) with
/// every key generated here, in the CA's folder: for tests and simulations. A
/// deployment enrols with [`crate::enrol`], so that no site secret ever exists there.
pub fn issue(dir: &Path, name: &str, role: Role) -> Result<(), PkiError> {
    check_name(name)?;
    let ca_key_path = dir.join("ca.key");
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|e| PkiError::Invalid {
        path: ca_key_path.clone(),
        message: e.to_string(),
    })?;
    let roster_path = dir.join("roster.json");
    let mut roster = SignedRoster::load(&roster_path, &dir.join("ca.pem"))?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    if cert_path.exists() {
        return Err(PkiError::Exists { path: cert_path });
    }
    let params = leaf_params(name, role)?;
    let key = KeyPair::generate().map_err(cert_error)?;
    let issuer = Issuer::new(ca_params()?, &ca_key);
    let cert = params.signed_by(&key, &issuer).map_err(cert_error)?;
    if let Role::Site(site) = role {
        if roster
            .entries
            .iter()
            .any(|e| e.name == name || e.site == site.0)
        {
            return Err(PkiError::Invalid {
                path: roster_path,
                message: format!("{name} or site id {} is already in the roster", site.0),
            });
        }
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), seed.as_mut())
            .map_err(|_| PkiError::Certificate("the system random generator failed".into()))?;
        let identity =
            IdentityKeyPair::from_seed(*seed).map_err(|e| PkiError::Certificate(e.to_string()))?;
        write_atomic(&dir.join(format!("{name}.identity")), identity.seed(), true)?;
        roster.entries.push(RosterEntry {
            name: name.to_string(),
            site: site.0,
            identity: hex(&identity.public().0),
        });
        roster = SignedRoster::sign(roster.entries, roster.version + 1, &ca_key)?;
    }
    write_atomic(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), false)?;
    write_atomic(&roster_path, &roster.to_json()?, false)
}

/// Reads a site's identity key written by [`issue`].
pub fn load_identity(path: &Path) -> Result<IdentityKeyPair, PkiError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| PkiError::Invalid {
        path: path.to_owned(),
        message: format!("{} bytes, expected a 32-byte seed", bytes.len()),
    })?;
    IdentityKeyPair::from_seed(seed).map_err(|e| PkiError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One site in the roster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterEntry {
    /// The name in the site's certificate.
    pub name: String,
    pub site: u32,
    /// Hex of the Ed25519 public key.
    pub identity: String,
}

/// The roster with the CA's ECDSA P-256 signature over its canonical encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRoster {
    /// Increases with every signing, so that a participant can refuse an older roster
    /// (one without a site added since, or with a key replaced since).
    pub version: u64,
    pub entries: Vec<RosterEntry>,
    /// Hex of the ASN.1 ECDSA signature.
    pub signature: String,
}

fn canonical(version: u64, entries: &[RosterEntry]) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|e| e.site);
    let mut out = format!("tessera/roster/v2\nversion\t{version}\n").into_bytes();
    for e in sorted {
        out.extend_from_slice(format!("{}\t{}\t{}\n", e.site, e.name, e.identity).as_bytes());
    }
    out
}

impl SignedRoster {
    /// Signs `entries` as the given version.
    pub(crate) fn sign(
        mut entries: Vec<RosterEntry>,
        version: u64,
        ca_key: &KeyPair,
    ) -> Result<Self, PkiError> {
        entries.sort_by_key(|e| e.site);
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &ca_key.serialize_der(),
            &rng,
        )
        .map_err(|e| PkiError::Certificate(format!("CA key is not ECDSA P-256: {e}")))?;
        let sig = pair
            .sign(&rng, &canonical(version, &entries))
            .map_err(|e| PkiError::Certificate(e.to_string()))?;
        Ok(Self {
            version,
            entries,
            signature: hex(sig.as_ref()),
        })
    }

    pub(crate) fn to_json(&self) -> Result<Vec<u8>, PkiError> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| PkiError::Certificate(format!("the roster does not serialise: {e}")))
    }

    /// Reads a roster and verifies its signature against the CA certificate.
    pub fn load(path: &Path, ca_cert: &Path) -> Result<Self, PkiError> {
        let roster: SignedRoster =
            serde_json::from_str(&read(path)?).map_err(|e| PkiError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        roster.verify(ca_cert)?;
        Ok(roster)
    }

    fn verify(&self, ca_cert: &Path) -> Result<(), PkiError> {
        let pem_text = read(ca_cert)?;
        let invalid = |message: String| PkiError::Invalid {
            path: ca_cert.to_owned(),
            message,
        };
        let der = pem_to_der(&pem_text).ok_or_else(|| invalid("no PEM certificate".into()))?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| invalid(e.to_string()))?;
        let key = cert.public_key().subject_public_key.data.to_vec();
        let sig = hex_vec(&self.signature)
            .ok_or_else(|| PkiError::RosterSignature(ca_cert.to_owned()))?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
            .verify(&canonical(self.version, &self.entries), &sig)
            .map_err(|_| PkiError::RosterSignature(ca_cert.to_owned()))
    }

    /// The secure-aggregation roster (site id → identity key).
    pub fn identities(&self) -> Result<tessera_secagg::Roster, PkiError> {
        self.entries
            .iter()
            .map(|e| {
                unhex::<32>(&e.identity)
                    .map(|k| (SiteId(e.site), IdentityPublicKey(k)))
                    .ok_or_else(|| PkiError::Invalid {
                        path: PathBuf::from("roster.json"),
                        message: format!("identity of {} is not 32 hex bytes", e.name),
                    })
            })
            .collect()
    }

    /// The identity key the roster holds for a site name.
    pub fn identity_of(&self, name: &str) -> Option<IdentityPublicKey> {
        let entry = self.entries.iter().find(|e| e.name == name)?;
        unhex::<32>(&entry.identity).map(IdentityPublicKey)
    }

    /// The site a certificate name belongs to.
    pub fn site_of(&self, name: &str) -> Option<SiteId> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| SiteId(e.site))
    }
}

pub(crate) fn hex_vec(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// The DER of the first certificate in a PEM text.
pub fn pem_to_der(text: &str) -> Option<Vec<u8>> {
    let p = pem::parse(text).ok()?;
    (p.tag() == "CERTIFICATE").then(|| p.contents().to_vec())
}

/// The common name of a DER certificate (how the coordinator names a peer).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tessera-pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn init_issue_and_verify_the_roster() {
        let dir = tmp("ok");
        init(&dir).unwrap();
        assert!(matches!(init(&dir), Err(PkiError::Exists { .. })));
        issue(&dir, "coordinator", Role::Coordinator).unwrap();
        issue(&dir, "site-a", Role::Site(SiteId(0))).unwrap();
        issue(&dir, "site-b", Role::Site(SiteId(1))).unwrap();
        assert!(matches!(
            issue(&dir, "site-c", Role::Site(SiteId(1))),
            Err(PkiError::Invalid { .. })
        ));
        assert!(matches!(
            issue(&dir, "Bad_Name", Role::Site(SiteId(5))),
            Err(PkiError::BadName(_))
        ));
        let roster = SignedRoster::load(&dir.join("roster.json"), &dir.join("ca.pem")).unwrap();
        assert_eq!(roster.entries.len(), 2);
        assert_eq!(roster.site_of("site-b"), Some(SiteId(1)));
        let identities = roster.identities().unwrap();
        let id_a = load_identity(&dir.join("site-a.identity")).unwrap();
        assert_eq!(identities.get(SiteId(0)), Some(&id_a.public()));
        let der = pem_to_der(&std::fs::read_to_string(dir.join("site-a.pem")).unwrap()).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("site-a"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("site-a.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_tampered_roster_or_a_foreign_ca_is_rejected() {
        let dir = tmp("tamper");
        init(&dir).unwrap();
        issue(&dir, "site-a", Role::Site(SiteId(0))).unwrap();
        let path = dir.join("roster.json");
        let text = std::fs::read_to_string(&path).unwrap();
        // swap the identity key for another
        let mut roster: SignedRoster = serde_json::from_str(&text).unwrap();
        roster.entries[0].identity = "11".repeat(32);
        std::fs::write(&path, serde_json::to_vec(&roster).unwrap()).unwrap();
        assert!(matches!(
            SignedRoster::load(&path, &dir.join("ca.pem")),
            Err(PkiError::RosterSignature(_))
        ));
        // a valid roster checked against another federation's CA
        std::fs::write(&path, text).unwrap();
        let other = tmp("other");
        init(&other).unwrap();
        assert!(matches!(
            SignedRoster::load(&path, &other.join("ca.pem")),
            Err(PkiError::RosterSignature(_))
        ));
    }
}
