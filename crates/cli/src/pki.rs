//! `tessera pki init` and `tessera pki issue`.

use clap::Subcommand;
use std::path::PathBuf;
use tessera_net::enrol::{request, sign};
use tessera_net::pki::{Role, init, issue};
use tessera_secagg::SiteId;

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create a federation CA and an empty roster in DIR.
    Init {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
    /// At a site (or the coordinator): generate its own keys in DIR and write a request
    /// holding only the public halves, for the CA to sign.
    Request {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The site's name (lower-case letters, digits, '-').
        #[arg(
            long,
            conflicts_with = "coordinator",
            required_unless_present = "coordinator"
        )]
        site: Option<String>,
        /// Request the coordinator's certificate (named "coordinator").
        #[arg(long)]
        coordinator: bool,
    },
    /// At the CA: check a request, issue its certificate and, for a site, add it to the
    /// roster. The CA's folder never receives a participant's secret.
    Sign {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// The request file written by `tessera pki request`.
        #[arg(long)]
        request: PathBuf,
        /// The site's numeric id in secure aggregation (omit for the coordinator).
        #[arg(long)]
        id: Option<u32>,
    },
    /// Issue a certificate with every key generated in the CA's folder (tests and
    /// simulations; a deployment uses `request` and `sign`): for a site (with its
    /// identity key and roster entry), or for the coordinator.
    Issue {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Site name (lower-case letters, digits, '-'); also its certificate name.
        #[arg(
            long,
            conflicts_with = "coordinator",
            required_unless_present = "coordinator"
        )]
        site: Option<String>,
        /// The site's numeric id in secure aggregation.
        #[arg(long, requires = "site")]
        id: Option<u32>,
        /// Issue the coordinator's certificate (named "coordinator").
        #[arg(long)]
        coordinator: bool,
    },
}

pub fn run(cmd: &PkiCommand) -> Result<(), String> {
    match cmd {
        PkiCommand::Init { dir } => {
            init(dir).map_err(|e| e.to_string())?;
            println!(
                "federation CA created in {} (keep ca.key offline)",
                dir.display()
            );
        }
        PkiCommand::Issue {
            dir,
            site: Some(name),
            id,
            ..
        } => {
            let id = id.ok_or(
                "--id is required with --site: the site's numeric id in secure aggregation",
            )?;
            issue(dir, name, Role::Site(SiteId(id))).map_err(|e| e.to_string())?;
            println!("issued {name}.pem, {name}.key and {name}.identity; roster.json re-signed");
        }
        PkiCommand::Request { dir, site, .. } => {
            let (name, is_site) = match site {
                Some(name) => (name.as_str(), true),
                None => ("coordinator", false),
            };
            let path = request(dir, name, is_site).map_err(|e| e.to_string())?;
            println!(
                "keys written in {} (keep them there); send {} to the CA",
                dir.display(),
                path.display()
            );
        }
        PkiCommand::Sign { dir, request, id } => {
            let cert = sign(dir, request, id.map(SiteId)).map_err(|e| e.to_string())?;
            println!(
                "issued {}; give it back with ca.pem and roster.json",
                cert.display()
            );
        }
        PkiCommand::Issue { dir, .. } => {
            issue(dir, "coordinator", Role::Coordinator).map_err(|e| e.to_string())?;
            println!(
                "issued coordinator.pem and coordinator.key in {}",
                dir.display()
            );
        }
    }
    Ok(())
}
