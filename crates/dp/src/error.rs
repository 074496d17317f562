use tessera_secagg::EncodingError;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum DpError {
    #[error("{name} = {value} is out of range: expected {expected}")]
    BadParameter {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error(transparent)]
    Encoding(#[from] EncodingError),
    #[error(
        "conditional randomised rounding failed {attempts} times in a row; the norm bound \
         cannot be met (this indicates a bug, not bad luck)"
    )]
    Rounding { attempts: u32 },
    #[error("infeasible privacy plan: {0}")]
    Infeasible(String),
    #[error(
        "privacy budget exhausted: round {round} would raise ε from {spent:.4} to {next:.4}, \
         above the target ε = {target} at δ = {delta}; training stops here (raise epsilon or \
         lower rounds in the dp settings)"
    )]
    BudgetExhausted {
        round: u64,
        spent: f64,
        next: f64,
        target: f64,
        delta: f64,
    },
    #[error("opendp: {0}")]
    OpenDp(String),
}

impl From<opendp::error::Error> for DpError {
    fn from(e: opendp::error::Error) -> Self {
        DpError::OpenDp(e.to_string())
    }
}
