//! `tessera pki init` and `tessera pki issue`.

use clap::Subcommand;
use std::path::PathBuf;
use tessera_net::pki::{Role, init, issue};
use tessera_secagg::SiteId;

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create a federation CA and an empty roster in DIR.
    Init {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
    /// Issue a certificate: for a site (with its identity key and roster entry), or
    /// for the coordinator.
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
