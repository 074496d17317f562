//! Differential privacy for securely aggregated federated updates.
//!
//! Secure aggregation hides each site's update from the coordinator, but the sum it
//! reveals can still leak about a site's data. Here every site clips its update, adds
//! its share of integer noise and only then masks it, so the sum the coordinator
//! unmasks already carries the full noise: the guarantee does not rest on trusting the
//! coordinator (the distributed discrete Gaussian of Kairouz, Liu and Steinke, ICML 2021).
//!
//! - [`sampler`]: exact discrete Gaussian sampling from a caller's CSPRNG (checked
//!   against OpenDP's sampler), and an approximate Skellam sampler for comparison.
//! - [`codec`]: rotation, L2 clipping, scaling, conditional randomised rounding, noise
//!   and wrapping into the secure-aggregation ring; and the coordinator's inverse.
//! - [`plan`]: from (ε, δ), rounds, sites, the guaranteed contributors, clip and bit
//!   width to the noise, grid step and wrap-around probability, or a refusal that says
//!   which setting to change.
//! - [`update`]: the one home of "f32 update ↔ ring vector": the fixed-point codec
//!   without DP or the private codec with it, chosen per round by a [`CodecSpec`].
//! - [`accounting`]: per-round zCDP from OpenDP's privacy maps (plus the correction for
//!   sums of discrete Gaussians), composition and (ε, δ) conversion with OpenDP, and the
//!   [`Ledger`] that halts training before the budget is exceeded.
//!
//! Neighbouring datasets differ by one site's whole update (add/remove one site): the
//! guarantee is site-level. Sample counts used for weighting are treated as public.

pub mod accounting;
pub mod audit;
pub mod codec;
mod error;
pub mod plan;
mod plan_patient;
pub mod pld;
pub mod query;
pub mod rotation;
pub mod sampler;
pub mod subsampled;
pub mod update;

pub use accounting::{Ledger, LedgerEntry};
pub use codec::{PrivateCodec, PrivateCodecSpec, Sensitivity, SiteNoise, Unit};
pub use error::DpError;
pub use plan::{DpConfig, DpPlan, Mechanism, PrivacyUnit, RoundShape, plan, wrap_bound};
pub use sampler::{DiscreteGaussian, Ratio, Skellam};
pub use update::{Codec, CodecSpec, FixedPointSpec};
