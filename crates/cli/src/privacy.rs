//! `tessera privacy epsilon|plan`: ε of a configuration, or the noise a target ε needs,
//! without running anything (the accounting lives in `tessera_dp::query`).

use tessera_dp::Sensitivity;
use tessera_dp::query::{Accountant, Noise, Query, epsilon, plan};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum MechanismArg {
    /// Continuous Gaussian noise (σ = multiplier × L2 sensitivity).
    Gaussian,
    /// The sum of discrete Gaussians from several sites (distributed DP).
    DiscreteGaussianSum,
    /// The sum of Skellam shares from several sites.
    Skellam,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AccountantArg {
    Pld,
    Rdp,
    Zcdp,
    Best,
}

#[derive(clap::Args)]
pub struct Config {
    #[arg(long, value_enum, default_value = "gaussian")]
    mechanism: MechanismArg,
    /// Gaussian: noise multiplier (σ over the L2 sensitivity).
    #[arg(long)]
    noise_multiplier: Option<f64>,
    /// Gaussian: σ (with --l2-sensitivity); discrete Gaussian sum: each site's σ.
    #[arg(long)]
    sigma: Option<f64>,
    /// Skellam: each site's μ.
    #[arg(long)]
    mu: Option<f64>,
    #[arg(long)]
    l2_sensitivity: Option<f64>,
    /// Discrete Gaussian sum and Skellam (default: the L2 sensitivity squared).
    #[arg(long)]
    l1_sensitivity: Option<f64>,
    /// Discrete Gaussian sum: coordinates of the vector.
    #[arg(long)]
    dim: Option<usize>,
    /// Discrete Gaussian sum and Skellam: sites whose noise is counted.
    #[arg(long, default_value_t = 1)]
    contributors: usize,
    #[arg(long)]
    rounds: u64,
    /// Poisson sampling probability per round, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    sampling_rate: f64,
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    #[arg(long, value_enum, default_value = "best")]
    accountant: AccountantArg,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum PrivacyCommand {
    /// ε for a configuration.
    Epsilon(Config),
    /// The least noise for a target ε (the noise arguments are ignored).
    Plan {
        #[arg(long)]
        epsilon: f64,
        #[command(flatten)]
        config: Config,
    },
}

fn need(value: Option<f64>, flag: &str) -> Result<f64, String> {
    value.ok_or_else(|| format!("{flag} is required for this mechanism"))
}

/// The query; `level` stands in for the noise when planning.
fn query(c: &Config, level: Option<f64>) -> Result<Query, String> {
    let l2 = c.l2_sensitivity;
    let sensitivity = |l2: f64| Sensitivity {
        l2,
        l1: c.l1_sensitivity.unwrap_or(l2 * l2),
    };
    let noise = match c.mechanism {
        MechanismArg::Gaussian => {
            let multiplier = match (level, c.noise_multiplier, c.sigma, l2) {
                (Some(z), ..) => z,
                (None, Some(z), _, _) => z,
                (None, None, Some(s), Some(d)) if d > 0.0 => s / d,
                _ => return Err("give --noise-multiplier, or --sigma with --l2-sensitivity".into()),
            };
            Noise::Gaussian { multiplier }
        }
        MechanismArg::DiscreteGaussianSum => Noise::DiscreteGaussianSum {
            sigma: level.map_or_else(|| need(c.sigma, "--sigma"), Ok)?,
            sensitivity: sensitivity(need(l2, "--l2-sensitivity")?),
            dim: c
                .dim
                .ok_or("--dim is required for the discrete Gaussian sum")?,
            contributors: c.contributors,
        },
        MechanismArg::Skellam => Noise::Skellam {
            mu: level.map_or_else(|| need(c.mu, "--mu"), Ok)?,
            sensitivity: sensitivity(need(l2, "--l2-sensitivity")?),
            contributors: c.contributors,
        },
    };
    Ok(Query {
        noise,
        rounds: c.rounds,
        sampling_rate: c.sampling_rate,
        delta: c.delta,
        accountant: match c.accountant {
            AccountantArg::Pld => Accountant::Pld,
            AccountantArg::Rdp => Accountant::Rdp,
            AccountantArg::Zcdp => Accountant::Zcdp,
            AccountantArg::Best => Accountant::Best,
        },
    })
}

fn level_name(m: MechanismArg) -> &'static str {
    match m {
        MechanismArg::Gaussian => "noise_multiplier",
        MechanismArg::DiscreteGaussianSum => "sigma",
        MechanismArg::Skellam => "mu",
    }
}

pub fn run(cmd: &PrivacyCommand) -> Result<(), String> {
    match cmd {
        PrivacyCommand::Epsilon(c) => {
            let q = query(c, None)?;
            let a = epsilon(&q).map_err(|e| e.to_string())?;
            if c.json {
                println!(
                    "{{\"epsilon\": {}, \"accountant\": \"{}\", \"delta\": {}}}",
                    a.epsilon, a.accountant, c.delta
                );
            } else {
                println!(
                    "ε = {:.6} at δ = {} after {} rounds (accountant: {})",
                    a.epsilon, c.delta, c.rounds, a.accountant
                );
            }
        }
        PrivacyCommand::Plan {
            epsilon: target,
            config: c,
        } => {
            let q = query(c, Some(1.0))?;
            let (level, a) = plan(*target, &q).map_err(|e| e.to_string())?;
            let name = level_name(c.mechanism);
            if c.json {
                println!(
                    "{{\"{name}\": {level}, \"epsilon\": {}, \"accountant\": \"{}\", \"delta\": {}}}",
                    a.epsilon, a.accountant, c.delta
                );
            } else {
                println!(
                    "{name} = {level:.6} gives ε = {:.6} ≤ {target} at δ = {} after {} rounds (accountant: {})",
                    a.epsilon, c.delta, c.rounds, a.accountant
                );
            }
        }
    }
    Ok(())
}
