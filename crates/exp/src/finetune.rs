//! Private fine-tuning arms: the model pretrained on a public cohort (a stand-in for
//! DeepLesion), and federations that train only its heads — per site without DP, or per
//! sampled patient with the patient privacy unit — through the real coordinator and site
//! machines, with secure aggregation and the sites' own noise.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tessera_core::seed::RootSeed;
use tessera_core::{LocalTrainer, LocalTrainingConfig, ParamLayout};
use tessera_fl::{FederationConfig, Weighting, memory};
use tessera_train::{Example, FineTuner};

use crate::arms::{ArmInputs, RoundLog, round_config, trainer};
use crate::error::ExpError;
use crate::federated::{FederatedOutcome, run_rounds};
use crate::spec::{FederatedArm, FineTune};

type PublicKey = (u64, String, usize, String);

/// Public models already pretrained in this process (arms of one run share them).
fn memo() -> &'static Mutex<HashMap<PublicKey, Vec<f32>>> {
    static MEMO: OnceLock<Mutex<HashMap<PublicKey, Vec<f32>>>> = OnceLock::new();
    MEMO.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The detector pretrained centrally on the public cohort (one Adam run of
/// `pretrain_steps` batches, with the study's augmentation).
pub(crate) fn public_model(inputs: &ArmInputs<'_>, ft: &FineTune) -> Result<Vec<f32>, ExpError> {
    let profile = inputs.profile;
    let key = (
        inputs.seed,
        ft.public.clone(),
        ft.pretrain_steps,
        format!("{:?}", profile.model),
    );
    if let Some(found) = memo().lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(found);
    }
    let examples: Vec<Example> = inputs
        .cohorts
        .public
        .iter()
        .filter(|c| c.id == ft.public)
        .flat_map(|c| c.patients.iter().flat_map(|p| p.examples.iter().cloned()))
        .collect();
    if examples.is_empty() {
        return Err(ExpError::Data(format!(
            "public cohort \"{}\" has no training examples",
            ft.public
        )));
    }
    let mut t = trainer(profile, examples, inputs.seed, 2)?;
    let start = t.parameters();
    let config = LocalTrainingConfig {
        steps: ft.pretrain_steps,
        ..round_config(profile, inputs.seed)
    };
    let model = t.train(&start, &config)?.parameters;
    if let Ok(mut m) = memo().lock() {
        m.insert(key, model.clone());
    }
    Ok(model)
}

/// `full` with the entries of `heads` (by name) replaced.
fn with_heads(
    full_layout: &ParamLayout,
    mut full: Vec<f32>,
    heads_layout: &ParamLayout,
    heads: &[f32],
) -> Result<Vec<f32>, ExpError> {
    let at: BTreeMap<&str, usize> = full_layout
        .entries()
        .iter()
        .map(|e| (e.name.as_str(), e.offset))
        .collect();
    for e in heads_layout.entries() {
        let offset = at.get(e.name.as_str()).ok_or_else(|| {
            ExpError::Data(format!("head {} is not in the detector's layout", e.name))
        })?;
        full[*offset..*offset + e.len].copy_from_slice(&heads[e.offset..e.offset + e.len]);
    }
    Ok(full)
}

/// A federation of the public model's heads over the training hospitals.
pub(crate) fn train_fine_tune(
    inputs: &ArmInputs<'_>,
    arm: &FederatedArm,
    ft: &FineTune,
) -> Result<FederatedOutcome, ExpError> {
    let (profile, cohorts, seed) = (inputs.profile, inputs.cohorts, inputs.seed);
    let protocol = arm.protocol.fl().ok_or_else(|| {
        ExpError::Invalid("fine-tuning arms need a protocol other than \"float\"".into())
    })?;
    let public = public_model(inputs, ft)?;
    let mut sites = Vec::new();
    let mut site_examples = Vec::new();
    for h in &cohorts.hospitals {
        let patients: Vec<Vec<Example>> = h.patients.iter().map(|p| p.examples.clone()).collect();
        site_examples.push(patients.iter().map(Vec::len).sum());
        sites.push(FineTuner::new(
            &profile.model,
            &public,
            patients,
            ft.train,
            1,
        )?);
    }
    let layout = sites[0].layout().clone();
    let initial = sites[0].parameters();
    let mut dp = arm.dp.clone();
    dp.rounds = profile.rounds;
    dp.patients = cohorts
        .hospitals
        .iter()
        .map(|h| h.patients.len() as u64)
        .sum();
    let weighting = if dp.unit == tessera_dp::PrivacyUnit::Patient {
        Weighting::Uniform
    } else {
        arm.weighting
    };
    let max_weight = site_examples.iter().copied().max().unwrap_or(1) as u64;
    let config = FederationConfig::builder(inputs.session, inputs.dir.join("checkpoint.bin"))
        .strategy(arm.strategy.clone())
        .training(round_config(profile, seed))
        .protocol(protocol)
        .rates(0.05, 0.0)
        .codec(arm.bits, arm.clip, max_weight)
        .weighting(weighting)
        .timeouts(Duration::from_secs(3600), Duration::from_secs(600))
        .dp(dp)
        .build()?;
    let runtime = crate::federated::runtime(inputs.dir)?;
    let root = RootSeed::from_experiment(seed);
    let (global, rounds, ledger) = runtime.block_on(async {
        let transcripts = inputs.dir.join("transcripts");
        let mut fed = memory::start(
            config,
            layout.clone(),
            initial,
            sites,
            &BTreeMap::new(),
            &transcripts,
            root,
        )
        .await?;
        let (rounds, _) = run_rounds(&mut fed.coordinator, profile.rounds, false).await?;
        let global = fed.coordinator.global().to_vec();
        let ledger = fed.coordinator.ledger().cloned();
        fed.coordinator.shutdown().await?;
        for s in fed.sites {
            let _ = s.await;
        }
        Ok::<(Vec<f32>, Vec<RoundLog>, _), ExpError>((global, rounds, ledger))
    })?;
    let full_layout = trainer(profile, Vec::new(), seed, 1)?.layout().clone();
    let model = with_heads(&full_layout, public, &layout, &global)?;
    Ok(FederatedOutcome {
        model,
        rounds,
        ledger,
        site_examples,
        audit: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ParamKind;

    #[test]
    fn heads_replace_their_entries_by_name_and_nothing_else() {
        let full = ParamLayout::new(vec![
            ("backbone".into(), vec![3], ParamKind::Weight),
            ("head_a".into(), vec![2], ParamKind::Weight),
            ("head_b".into(), vec![1], ParamKind::Weight),
        ])
        .unwrap();
        let heads = ParamLayout::new(vec![
            ("head_a".into(), vec![2], ParamKind::Weight),
            ("head_b".into(), vec![1], ParamKind::Weight),
        ])
        .unwrap();
        let out = with_heads(&full, vec![1.0; 6], &heads, &[7.0, 8.0, 9.0]).unwrap();
        // Entries sort by name: backbone (0..3), head_a (3..5), head_b (5..6).
        assert_eq!(out, vec![1.0, 1.0, 1.0, 7.0, 8.0, 9.0]);
    }
}
