//! The coordinator's receipts: its ECDSA P-256 signature (with the key of its TLS
//! certificate, which the federation CA signed) over a site's transcript head. A site
//! stores each receipt in its transcript; the coordinator keeps the latest per site.
//! Together they anchor the transcript: the records a receipt covers cannot be removed
//! or edited, and a tail cut below the coordinator's latest receipt is detected.

use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::pki::{PkiError, pem_to_der, read};
use crate::transcript::hex;

const LABEL: &str = "tessera/receipt/v1";

/// The coordinator's signed acknowledgement that site `site`'s transcript had `seq`
/// records ending in the record whose hash is `head`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub site: u32,
    /// Hex of the session id.
    pub session: String,
    pub seq: u64,
    pub head: String,
    /// Hex of the ASN.1 ECDSA P-256 signature.
    pub signature: String,
}

fn canonical(site: u32, session: &str, seq: u64, head: &str) -> Vec<u8> {
    format!("{LABEL}\n{site}\n{session}\n{seq}\n{head}\n").into_bytes()
}

/// The coordinator's receipt key: the private key of its TLS certificate.
pub struct ReceiptSigner {
    pair: EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl ReceiptSigner {
    /// Loads the coordinator's key (`NAME.key`, PEM PKCS#8, ECDSA P-256).
    pub fn load(key_pem: &Path) -> Result<Self, PkiError> {
        let text = read(key_pem)?;
        let invalid = |message: String| PkiError::Invalid {
            path: key_pem.to_owned(),
            message,
        };
        let der = pem::parse(text.as_bytes())
            .map_err(|e| invalid(e.to_string()))?
            .into_contents();
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &rng)
            .map_err(|e| invalid(format!("not an ECDSA P-256 key: {e}")))?;
        Ok(Self { pair, rng })
    }

    pub fn sign(
        &self,
        site: u32,
        session: &str,
        seq: u64,
        head: &str,
    ) -> Result<Receipt, PkiError> {
        let sig = self
            .pair
            .sign(&self.rng, &canonical(site, session, seq, head))
            .map_err(|e| PkiError::Certificate(format!("signing a receipt failed: {e}")))?;
        Ok(Receipt {
            site,
            session: session.into(),
            seq,
            head: head.into(),
            signature: hex(sig.as_ref()),
        })
    }
}

/// The coordinator's public key, from its certificate, checked to be signed by the CA.
pub struct ReceiptVerifier {
    key: Vec<u8>,
}

impl ReceiptVerifier {
    pub fn load(coordinator_cert: &Path, ca_cert: &Path) -> Result<Self, PkiError> {
        let parse = |path: &Path| -> Result<Vec<u8>, PkiError> {
            pem_to_der(&read(path)?).ok_or_else(|| PkiError::Invalid {
                path: path.to_owned(),
                message: "no PEM certificate".into(),
            })
        };
        let (leaf, ca) = (parse(coordinator_cert)?, parse(ca_cert)?);
        let invalid = |path: &Path, message: String| PkiError::Invalid {
            path: path.to_owned(),
            message,
        };
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf)
            .map_err(|e| invalid(coordinator_cert, e.to_string()))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca)
            .map_err(|e| invalid(ca_cert, e.to_string()))?;
        UnparsedPublicKey::new(
            &ECDSA_P256_SHA256_ASN1,
            &ca.public_key().subject_public_key.data,
        )
        .verify(leaf.tbs_certificate.as_ref(), &leaf.signature_value.data)
        .map_err(|_| {
            invalid(
                coordinator_cert,
                format!("not signed by the CA in {}", ca_cert.display()),
            )
        })?;
        Ok(Self {
            key: leaf.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// Whether the coordinator signed `receipt`.
    pub fn verify(&self, receipt: &Receipt) -> bool {
        let Some(sig) = crate::pki::hex_vec(&receipt.signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.key)
            .verify(
                &canonical(receipt.site, &receipt.session, receipt.seq, &receipt.head),
                &sig,
            )
            .is_ok()
    }
}
