//! `tessera transcript verify`: checks a site's signed egress transcript (chain,
//! sequence and every signature) against the site's identity key in the CA-signed
//! roster, and prints what the site sent, by kind.

use std::path::PathBuf;
use tessera_net::pki::SignedRoster;
use tessera_net::transcript::verify;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The federation's PKI folder (roster.json and ca.pem are read).
    #[arg(long, default_value = "pki")]
    pki: PathBuf,
    /// The site's name in the roster.
    #[arg(long)]
    site: String,
    /// The transcript file.
    transcript: PathBuf,
}

pub fn verify_command(args: &VerifyArgs) -> Result<(), String> {
    let roster = SignedRoster::load(&args.pki.join("roster.json"), &args.pki.join("ca.pem"))
        .map_err(|e| e.to_string())?;
    let key = roster.identity_of(&args.site).ok_or_else(|| {
        format!(
            "{} is not in {}",
            args.site,
            args.pki.join("roster.json").display()
        )
    })?;
    let summary = verify(&args.transcript, &key).map_err(|e| e.to_string())?;
    println!(
        "{}: {} records, chain and signatures verify against {}'s key",
        args.transcript.display(),
        summary.records,
        args.site
    );
    for (kind, (count, bytes)) in &summary.by_kind {
        println!("  {kind}: {count} messages, {bytes} bytes");
    }
    Ok(())
}
