//! How an `f32` update becomes a ring vector and back, whichever codec a round uses:
//! the fixed-point codec of `tessera-secagg` without DP, or the private codec of this
//! crate with it. The coordinator chooses a [`CodecSpec`] each round and sends it; sites
//! build the [`Codec`] from it to encode, the coordinator to decode.

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use tessera_secagg::{EncodingError, FixedPoint, Modulus, PlainVector, WeightedMean};

use crate::codec::{PrivateCodec, PrivateCodecSpec};
use crate::error::DpError;
use crate::sampler::{DiscreteGaussian, Ratio};

/// How sites encode their update for aggregation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CodecSpec {
    /// Per-coordinate clipping and stochastic rounding, no differential privacy.
    FixedPoint(FixedPointSpec),
    /// L2 clipping, rotation, conditional rounding and (optionally) the site's share of
    /// DP noise: see [`crate::codec`].
    Private(PrivateCodecSpec),
}

/// The fixed-point codec's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedPointSpec {
    pub bits: u8,
    /// Each coordinate of a site's update (its parameter change) is clipped to ±clip.
    pub clip: f32,
    pub scale: f64,
    pub max_sites: usize,
    /// Largest site weight (sample count) the codec can carry.
    pub max_weight: u64,
    /// Coordinates of the update.
    pub dim: usize,
}

impl FixedPointSpec {
    pub fn codec(&self) -> Result<FixedPoint, EncodingError> {
        let modulus = Modulus::new(self.bits).map_err(|_| EncodingError::BadParameter {
            name: "bits",
            value: f64::from(self.bits),
        })?;
        FixedPoint::new(
            modulus,
            self.clip,
            self.scale,
            self.max_sites,
            self.max_weight,
            self.dim,
        )
    }
}

/// A round's codec, ready to encode or decode.
pub enum Codec {
    FixedPoint(FixedPoint),
    Private(Box<PrivateCodec>),
}

/// Largest update a codec is built for (as the ring's largest vector).
pub const MAX_DIM: usize = 1 << 28;

impl CodecSpec {
    /// Builds the codec; a dimension outside 1..=[`MAX_DIM`] is refused before anything
    /// is allocated.
    pub fn codec(&self) -> Result<Codec, DpError> {
        let dim = self.dim();
        if dim == 0 || dim > MAX_DIM {
            return Err(DpError::BadParameter {
                name: "codec.dim",
                value: dim as f64,
                expected: "between 1 and 2^28",
            });
        }
        Ok(match self {
            CodecSpec::FixedPoint(spec) => Codec::FixedPoint(spec.codec()?),
            CodecSpec::Private(spec) => Codec::Private(Box::new(PrivateCodec::new(spec.clone())?)),
        })
    }

    /// Coordinates of the update (before encoding).
    pub fn dim(&self) -> usize {
        match self {
            CodecSpec::FixedPoint(s) => s.dim,
            CodecSpec::Private(s) => s.dim,
        }
    }

    /// Poisson sampling rate of patients when the codec's unit is the patient.
    pub fn patient_sampling(&self) -> Option<f64> {
        match self {
            CodecSpec::Private(PrivateCodecSpec {
                unit: crate::codec::Unit::Patient { sampling_rate, .. },
                ..
            }) => Some(*sampling_rate),
            _ => None,
        }
    }

    /// Largest site weight the codec can carry.
    pub fn max_weight(&self) -> u64 {
        match self {
            CodecSpec::FixedPoint(s) => s.max_weight,
            CodecSpec::Private(s) => s.max_weight,
        }
    }
}

impl Codec {
    pub fn encoded_len(&self) -> usize {
        match self {
            Codec::FixedPoint(c) => c.encoded_len(),
            Codec::Private(c) => c.encoded_len(),
        }
    }

    /// Encodes one site's update (its parameter change) and weight.
    pub fn encode<R: CryptoRng + ?Sized>(
        &self,
        update: &[f32],
        weight: u64,
        rng: &mut R,
    ) -> Result<PlainVector, DpError> {
        Ok(match self {
            Codec::FixedPoint(c) => c.encode(update, weight, rng)?,
            Codec::Private(c) => c.encode(update, weight, rng)?,
        })
    }

    /// [`Self::encode`], reusing the update's buffer where the codec can (fixed point).
    pub fn encode_owned<R: CryptoRng + ?Sized>(
        &self,
        update: Vec<f32>,
        weight: u64,
        rng: &mut R,
    ) -> Result<PlainVector, DpError> {
        Ok(match self {
            Codec::FixedPoint(c) => c.encode_owned(update, weight, rng)?,
            Codec::Private(c) => c.encode(&update, weight, rng)?,
        })
    }

    /// Encodes one site's sampled patients' contributions (private codec with the
    /// patient unit only).
    pub fn encode_contributions<R: CryptoRng + ?Sized>(
        &self,
        contributions: &[Vec<f32>],
        rng: &mut R,
    ) -> Result<PlainVector, DpError> {
        match self {
            Codec::FixedPoint(_) => Err(DpError::Infeasible(
                "per-patient contributions need the private codec (dp.unit = \"patient\")".into(),
            )),
            Codec::Private(c) => c.encode_contributions(contributions, rng),
        }
    }

    /// Decodes the weighted mean from an unmasked sum; with `central`, the coordinator's
    /// own discrete Gaussian noise (σ in grid units) is added first (the trusted-
    /// coordinator baseline, private codec only).
    pub fn decode<R: CryptoRng + ?Sized>(
        &self,
        sum: &PlainVector,
        central: Option<(Ratio, &mut R)>,
    ) -> Result<WeightedMean, DpError> {
        match (self, central) {
            (Codec::FixedPoint(c), None) => Ok(c.decode(sum)?),
            (Codec::FixedPoint(_), Some(_)) => Err(DpError::Infeasible(
                "central noise needs the private codec (a dp mechanism)".into(),
            )),
            (Codec::Private(c), None) => c.decode(sum),
            (Codec::Private(c), Some((sigma, rng))) => {
                c.decode_with_central_noise(sum, &DiscreteGaussian::new(sigma), rng)
            }
        }
    }
}
