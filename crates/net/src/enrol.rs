//! Enrolment without key escrow: a participant generates its own TLS key and (for a
//! site) its Ed25519 identity key, and sends the CA a request holding only the public
//! halves: a certificate signing request and the identity public key, signed with the
//! identity key to prove possession. The CA checks both, issues the certificate (with
//! the usage of the participant's role and a bounded validity) and adds the site to the
//! signed roster. The CA's folder never holds a participant's secret.
//!
//! - `tessera pki request --dir SITE_DIR --site NAME` writes `NAME.key`,
//!   `NAME.identity` (0600) and `NAME.request.json` in the site's own folder.
//! - `tessera pki sign --dir CA_DIR --request NAME.request.json --id N` writes
//!   `NAME.pem` and the re-signed `roster.json` in the CA's folder; the site copies
//!   them, with `ca.pem`, into its folder.

use rcgen::{CertificateSigningRequestParams, Issuer, KeyPair};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tessera_secagg::{IdentityKeyPair, IdentityPublicKey, Signature, SiteId};

use crate::pki::{
    PkiError, Role, RosterEntry, SignedRoster, ca_params, cert_error, check_name, hex, io,
    leaf_params, read, unhex, write_atomic,
};

/// Domain separation of the identity key's proof of possession.
const LABEL: &str = "tessera/enrol/v1";

/// What a participant sends the CA: public halves only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub name: String,
    /// PEM certificate signing request for the participant's TLS key.
    pub csr: String,
    /// Sites: hex of the Ed25519 identity public key, and of its signature over `csr`.
    pub identity: Option<String>,
    pub proof: Option<String>,
}

/// Generates the participant's keys in `dir` and writes its request; returns the
/// request's path. `site` is false for the coordinator.
pub fn request(dir: &Path, name: &str, site: bool) -> Result<PathBuf, PkiError> {
    check_name(name)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key_path = dir.join(format!("{name}.key"));
    let identity_path = dir.join(format!("{name}.identity"));
    for p in [&key_path, &identity_path] {
        if p.exists() {
            return Err(PkiError::Exists { path: p.clone() });
        }
    }
    let key = KeyPair::generate().map_err(cert_error)?;
    let role = if site {
        Role::Site(SiteId(0))
    } else {
        Role::Coordinator
    };
    let csr = leaf_params(name, role)?
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(cert_error)?;
    let (identity, proof) = if site {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), seed.as_mut())
            .map_err(|_| PkiError::Certificate("the system random generator failed".into()))?;
        let identity =
            IdentityKeyPair::from_seed(*seed).map_err(|e| PkiError::Certificate(e.to_string()))?;
        let proof = identity
            .sign_labelled(LABEL, csr.as_bytes())
            .map_err(|e| PkiError::Certificate(e.to_string()))?;
        write_atomic(&identity_path, identity.seed(), true)?;
        (Some(hex(&identity.public().0)), Some(hex(&proof.0)))
    } else {
        (None, None)
    };
    write_atomic(&key_path, key.serialize_pem().as_bytes(), true)?;
    let request = Request {
        name: name.to_string(),
        csr,
        identity,
        proof,
    };
    let path = dir.join(format!("{name}.request.json"));
    let json = serde_json::to_vec_pretty(&request).map_err(|e| PkiError::Invalid {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&path, &json, false)?;
    Ok(path)
}

/// Checks a request and issues its certificate from the CA in `ca_dir`; a site (with
/// its id) also joins the roster. Returns the certificate's path.
pub fn sign(ca_dir: &Path, request_path: &Path, site: Option<SiteId>) -> Result<PathBuf, PkiError> {
    let invalid = |message: String| PkiError::Invalid {
        path: request_path.to_owned(),
        message,
    };
    let req: Request =
        serde_json::from_str(&read(request_path)?).map_err(|e| invalid(e.to_string()))?;
    check_name(&req.name)?;
    let mut csr = CertificateSigningRequestParams::from_pem(&req.csr)
        .map_err(|e| invalid(format!("the signing request does not verify: {e}")))?;
    let role = site.map_or(Role::Coordinator, Role::Site);
    // The CA decides what the certificate says; only the public key comes from the request.
    csr.params = leaf_params(&req.name, role)?;
    let ca_key_path = ca_dir.join("ca.key");
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|e| PkiError::Invalid {
        path: ca_key_path.clone(),
        message: e.to_string(),
    })?;
    let cert_path = ca_dir.join(format!("{}.pem", req.name));
    if cert_path.exists() {
        return Err(PkiError::Exists { path: cert_path });
    }
    let roster_path = ca_dir.join("roster.json");
    let mut roster = SignedRoster::load(&roster_path, &ca_dir.join("ca.pem"))?;
    if let Some(site) = site {
        let entry = site_entry(&req, site).map_err(invalid)?;
        if roster
            .entries
            .iter()
            .any(|e| e.name == req.name || e.site == site.0)
        {
            return Err(invalid(format!(
                "{} or site id {} is already in the roster",
                req.name, site.0
            )));
        }
        roster.entries.push(entry);
        roster = SignedRoster::sign(roster.entries, roster.version + 1, &ca_key)?;
    } else if req.identity.is_some() {
        return Err(invalid("a site's request: give its id".into()));
    }
    let issuer = Issuer::new(ca_params()?, &ca_key);
    let cert = csr.signed_by(&issuer).map_err(cert_error)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), false)?;
    write_atomic(&roster_path, &roster.to_json()?, false)?;
    Ok(cert_path)
}

/// The roster entry of a site's request, after checking its proof of possession.
fn site_entry(req: &Request, site: SiteId) -> Result<RosterEntry, String> {
    let (Some(identity), Some(proof)) = (&req.identity, &req.proof) else {
        return Err("a site's request must carry its identity key and proof".into());
    };
    let key = unhex::<32>(identity)
        .map(IdentityPublicKey)
        .ok_or("identity is not 32 hex bytes")?;
    let sig = unhex::<64>(proof)
        .map(Signature)
        .ok_or("proof is not 64 hex bytes")?;
    key.verify_labelled(LABEL, req.csr.as_bytes(), &sig)
        .map_err(|_| "the identity key's proof of possession does not verify".to_string())?;
    Ok(RosterEntry {
        name: req.name.clone(),
        site: site.0,
        identity: identity.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::init;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tessera-enrol-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The CA's folder ends up with its own key and public files only; a tampered
    /// request is refused.
    #[test]
    fn the_ca_folder_never_holds_a_site_secret() {
        let (ca, site) = (tmp("ca"), tmp("site"));
        init(&ca).unwrap();
        let req = request(&site, "site-a", true).unwrap();
        sign(&ca, &req, Some(SiteId(0))).unwrap();
        let coord = request(&site.join("coord"), "coordinator", false).unwrap();
        sign(&ca, &coord, None).unwrap();
        for entry in std::fs::read_dir(&ca).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                name == "ca.key" || !(name.ends_with(".key") || name.ends_with(".identity")),
                "{name} in the CA folder"
            );
        }
        let roster = SignedRoster::load(&ca.join("roster.json"), &ca.join("ca.pem")).unwrap();
        let identity = crate::pki::load_identity(&site.join("site-a.identity")).unwrap();
        assert_eq!(roster.identity_of("site-a"), Some(identity.public()));

        // A request whose identity key was swapped (the proof no longer verifies).
        let other = request(&tmp("other"), "site-b", true).unwrap();
        let mut forged: Request =
            serde_json::from_str(&std::fs::read_to_string(&other).unwrap()).unwrap();
        forged.identity = Some(hex(&identity.public().0));
        std::fs::write(&other, serde_json::to_vec(&forged).unwrap()).unwrap();
        let err = sign(&ca, &other, Some(SiteId(1))).unwrap_err();
        assert!(err.to_string().contains("proof of possession"), "{err}");
    }
}
