//! The patient unit of the private codec: per-patient clipping, one rounding per site,
//! the fixed denominator, and the sensitivity the accountant relies on.

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use tessera_dp::{PrivateCodec, PrivateCodecSpec, SiteNoise, Unit};
use tessera_secagg::{Modulus, PlainVector};

const DIM: usize = 200;

fn spec(noise: SiteNoise) -> PrivateCodecSpec {
    PrivateCodecSpec {
        bits: 32,
        l2_clip: 1.0,
        gamma: 1e-4,
        dim: DIM,
        max_sites: 3,
        max_weight: 1,
        rotation_seed: [3; 32],
        site_noise: noise,
        unit: Unit::Patient {
            sampling_rate: 0.5,
            denominator: 4.0,
        },
    }
}

fn patient(seed: u32, norm: f32) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM)
        .map(|i| ((i as u32 * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x * norm / n).collect()
}

fn signed(v: &PlainVector, m: usize) -> Vec<i64> {
    v.as_slice()[..m]
        .iter()
        .map(|&w| i64::from(w as i32))
        .collect()
}

#[test]
fn the_sum_of_clipped_patients_is_divided_by_the_fixed_denominator() {
    let codec = PrivateCodec::new(spec(SiteNoise::None)).unwrap();
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    // Two sites: one with a patient far over the clip, one with two inside it.
    let a = vec![patient(1, 5.0)];
    let b = vec![patient(2, 0.5), patient(3, 0.25)];
    let mut sum = PlainVector::zeros(Modulus::new(32).unwrap(), codec.encoded_len());
    sum.add_assign(&codec.encode_contributions(&a, &mut rng).unwrap());
    sum.add_assign(&codec.encode_contributions(&b, &mut rng).unwrap());
    let decoded = codec.decode(&sum).unwrap();
    // The weight digits count sites, not patients.
    assert_eq!(decoded.total_weight, 2);
    for i in 0..DIM {
        let want = (a[0][i] / 5.0 + b[0][i] + b[1][i]) / 4.0;
        assert!(
            (decoded.mean[i] - want).abs() < 1e-4,
            "{i}: {} vs {want}",
            decoded.mean[i]
        );
    }
}

/// With the rounding's randomness held fixed, adding one patient (of any norm) moves the
/// site's integer vector by at most the sensitivity the accountant uses; with the
/// clipping removed the bound fails, so this test guards the clip.
#[test]
fn one_patient_moves_the_integer_sum_by_at_most_the_sensitivity() {
    let codec = PrivateCodec::new(spec(SiteNoise::None)).unwrap();
    let m = codec.padded_dim();
    let l2 = codec.sensitivity().l2;
    assert!(l2 < 1e4 * 1.0 + (m as f64).sqrt() + 1.0);
    let others: Vec<Vec<f32>> = (10..16).map(|s| patient(s, 0.7)).collect();
    for (seed, norm) in [(20, 0.3), (21, 1.0), (22, 40.0)] {
        let mut with = others.clone();
        with.push(patient(seed, norm));
        for draw in 0..20u8 {
            let x = codec
                .encode_contributions(&others, &mut ChaCha20Rng::from_seed([draw; 32]))
                .unwrap();
            let y = codec
                .encode_contributions(&with, &mut ChaCha20Rng::from_seed([draw; 32]))
                .unwrap();
            let d: f64 = signed(&x, m)
                .iter()
                .zip(signed(&y, m))
                .map(|(a, b)| ((b - a) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(d <= l2, "norm {norm}, draw {draw}: moved {d} > {l2}");
            assert!(
                d > 0.5 * norm.min(1.0) as f64 * 1e4,
                "the patient is present"
            );
        }
    }
}

#[test]
fn the_units_do_not_mix() {
    let codec = PrivateCodec::new(spec(SiteNoise::None)).unwrap();
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let err = codec.encode(&patient(1, 1.0), 1, &mut rng).unwrap_err();
    assert!(err.to_string().contains("per-patient"), "{err}");
    let site = PrivateCodec::new(PrivateCodecSpec {
        unit: Unit::Site,
        ..spec(SiteNoise::None)
    })
    .unwrap();
    let err = site
        .encode_contributions(&[patient(1, 1.0)], &mut rng)
        .unwrap_err();
    assert!(err.to_string().contains("patient"), "{err}");
    let err = codec
        .encode_contributions(&[vec![f32::NAN; DIM]], &mut rng)
        .unwrap_err();
    assert!(
        err.to_string().contains("finite") || err.to_string().contains("NaN"),
        "{err}"
    );
    let bad = PrivateCodec::new(PrivateCodecSpec {
        unit: Unit::Patient {
            sampling_rate: 0.0,
            denominator: 4.0,
        },
        ..spec(SiteNoise::None)
    });
    assert!(bad.is_err());
}
