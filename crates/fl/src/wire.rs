//! Messages between the coordinator and the sites, and how they are encoded.
//!
//! Secure-aggregation messages travel as [`Envelope`]s inside [`ToSite::SecAgg`] and
//! [`ToCoordinator::SecAgg`]; everything else a round needs is in [`RoundStart`].

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use tessera_core::{LocalTrainingConfig, Strategy};
use tessera_dp::{PrivateCodec, PrivateCodecSpec};
use tessera_secagg::{EncodingError, Envelope, FixedPoint, Modulus, PlainVector, RoundParams};
use thiserror::Error;

use crate::error::FlError;

/// Version of this message format.
pub const WIRE_VERSION: u8 = 1;

/// How sites encode their update for secure aggregation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CodecSpec {
    /// Per-coordinate clipping and stochastic rounding, no differential privacy.
    FixedPoint(FixedPointSpec),
    /// L2 clipping, rotation, conditional rounding and (optionally) the site's share of
    /// DP noise: see `tessera_dp::codec`.
    Private(PrivateCodecSpec),
}

/// A round's codec, ready to encode or decode.
pub enum Codec {
    FixedPoint(FixedPoint),
    Private(Box<PrivateCodec>),
}

impl CodecSpec {
    pub fn codec(&self) -> Result<Codec, FlError> {
        Ok(match self {
            CodecSpec::FixedPoint(spec) => Codec::FixedPoint(spec.codec()?),
            CodecSpec::Private(spec) => Codec::Private(Box::new(PrivateCodec::new(spec.clone())?)),
        })
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
    ) -> Result<PlainVector, FlError> {
        Ok(match self {
            Codec::FixedPoint(c) => c.encode(update, weight, rng)?,
            Codec::Private(c) => c.encode(update, weight, rng)?,
        })
    }
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

/// Everything a site needs to take part in a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundStart {
    pub params: RoundParams,
    pub codec: CodecSpec,
    pub training: LocalTrainingConfig,
    pub strategy: Strategy,
    /// The global model, in the layout's order.
    pub global: Vec<f32>,
    /// `false` only in the plaintext baseline: sites then send their encoded update in
    /// the clear instead of running secure aggregation.
    pub secure: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToSite {
    RoundStart(Box<RoundStart>),
    SecAgg(Box<Envelope>),
    /// The round is over for this site (finished, aborted, or it was dropped).
    RoundEnd {
        round: u64,
        completed: bool,
    },
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToCoordinator {
    SecAgg(Envelope),
    /// The plaintext baseline's unmasked, encoded update (never sent when `secure`).
    Plain {
        round: u64,
        update: PlainVector,
    },
}

#[derive(Debug, Error)]
#[error("undecodable message: {0}")]
pub struct WireError(String);

#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    version: u8,
    body: T,
}

pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    postcard::to_allocvec(&Versioned {
        version: WIRE_VERSION,
        body,
    })
    .unwrap_or_default()
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, WireError> {
    let (v, rest): (Versioned<T>, _) =
        postcard::take_from_bytes(bytes).map_err(|e| WireError(e.to_string()))?;
    if v.version != WIRE_VERSION {
        return Err(WireError(format!(
            "version {} (this build speaks {WIRE_VERSION})",
            v.version
        )));
    }
    if !rest.is_empty() {
        return Err(WireError(format!("{} trailing bytes", rest.len())));
    }
    Ok(v.body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_secagg::{GraphSpec, Round, SessionId, SiteId};

    /// Every strategy and graph survives the binary format (it cannot carry internally
    /// tagged enums, for instance).
    #[test]
    fn round_start_round_trips_for_every_strategy() {
        for strategy in [
            Strategy::FedAvg,
            Strategy::FedProx { mu: 0.1 },
            Strategy::FedBn,
            Strategy::FedAvgM {
                server_lr: 1.0,
                momentum: 0.9,
            },
        ] {
            for graph in [
                GraphSpec::Complete,
                GraphSpec::RandomRegular {
                    degree: 2,
                    seed: [1; 32],
                },
            ] {
                let msg = ToSite::RoundStart(Box::new(RoundStart {
                    params: RoundParams {
                        session: SessionId([1; 16]),
                        round: Round(2),
                        participants: vec![SiteId(0), SiteId(1), SiteId(2)],
                        vector_len: 4,
                        modulus: Modulus::new(16).unwrap(),
                        threshold: 2,
                        graph,
                    },
                    codec: CodecSpec::FixedPoint(FixedPointSpec {
                        bits: 16,
                        clip: 1.0,
                        scale: 10.0,
                        max_sites: 3,
                        max_weight: 5,
                        dim: 3,
                    }),
                    training: LocalTrainingConfig {
                        steps: 1,
                        batch_size: 2,
                        learning_rate: 0.1,
                        proximal_mu: 0.0,
                        seed: 4,
                    },
                    strategy: strategy.clone(),
                    global: vec![0.5, -1.0, 2.0],
                    secure: true,
                }));
                assert_eq!(decode::<ToSite>(&encode(&msg)).unwrap(), msg);
            }
        }
        assert!(decode::<ToSite>(&[9, 0]).is_err());
    }
}
