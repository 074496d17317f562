//! Federated arms: the real coordinator and site machines, over channels in this
//! process, over loopback QUIC, or with real `tessera site` processes
//! ([`Transport`]). Secure aggregation, dropouts, DP noise and the ledger are exactly
//! those of a deployment.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_core::seed::RootSeed;
use tessera_core::{LocalTrainer, LocalTrainingConfig, LocalUpdate, ParamLayout};
use tessera_dp::Ledger;
use tessera_fl::{Coordinator, FederationConfig, loopback, memory, sim};
use tessera_train::{DetectorTrainer, TrainError};

use crate::arms::{ArmInputs, RoundLog, partition, round_config, trainer};
use crate::audit::{ArmSite, PrivacyAudit};
use crate::error::ExpError;
use crate::spec::{FederatedArm, Transport};
use crate::transport::{self, ProcessContext};

/// A federation in progress, whatever its transport.
enum Running {
    Memory(memory::MemoryFederation),
    Quic(loopback::LoopbackFederation),
    Processes(transport::ProcessFederation),
}

impl Running {
    fn coordinator(&mut self) -> &mut Coordinator {
        match self {
            Running::Memory(f) => &mut f.coordinator,
            Running::Quic(f) => &mut f.coordinator,
            Running::Processes(f) => &mut f.coordinator,
        }
    }

    /// Stops the sites and waits for them.
    async fn finish(self) -> Result<(), ExpError> {
        match self {
            Running::Memory(mut f) => {
                f.coordinator.shutdown().await?;
                for site in f.sites {
                    let _ = site.await;
                }
                Ok(())
            }
            Running::Quic(f) => f.shutdown().await.map(|_| ()).map_err(Into::into),
            Running::Processes(f) => f.finish().await,
        }
    }
}

/// A trainer shared with the runner, which reads its final local model after the
/// federation ends (FedBN keeps normalisation layers at the sites).
struct SharedTrainer {
    inner: Arc<Mutex<DetectorTrainer>>,
    layout: ParamLayout,
    /// A fixed weight reported instead of the sample count (`site_weights`).
    weight: Option<u64>,
}

impl LocalTrainer for SharedTrainer {
    type Error = TrainError;

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn parameters(&self) -> Vec<f32> {
        match self.inner.lock() {
            Ok(t) => t.parameters(),
            Err(poisoned) => poisoned.into_inner().parameters(),
        }
    }

    fn train(
        &mut self,
        start: &[f32],
        config: &LocalTrainingConfig,
    ) -> Result<LocalUpdate, TrainError> {
        let update = match self.inner.lock() {
            Ok(mut t) => t.train(start, config),
            Err(poisoned) => poisoned.into_inner().train(start, config),
        }?;
        Ok(LocalUpdate {
            samples: self.weight.unwrap_or(update.samples),
            ..update
        })
    }
}

/// Site `i`'s weight in the mean: its fixed weight, or what it reports.
fn weight_of(arm: &FederatedArm, i: usize, reported: u64) -> u64 {
    arm.site_weights
        .as_ref()
        .and_then(|w| w.get(i).copied())
        .unwrap_or(reported)
}

/// What a federated arm returns: the model to evaluate, round logs and the ledger.
pub struct FederatedOutcome {
    pub model: Vec<f32>,
    pub rounds: Vec<RoundLog>,
    pub ledger: Option<Ledger>,
    pub site_examples: Vec<usize>,
    pub audit: Option<PrivacyAudit>,
}

/// The study's FedAvg in floating point (`protocol = "float"`): the same sites, local
/// training configs and seeds as a federation of this arm, with updates averaged in
/// f64 — no codec, no clipping, no quantisation, no protocol.
fn train_float(inputs: &ArmInputs<'_>, arm: &FederatedArm) -> Result<FederatedOutcome, ExpError> {
    let (profile, seed) = (inputs.profile, inputs.seed);
    let parts = partition(inputs.cohorts, arm.sites, arm.heterogeneity, seed)?;
    let site_examples: Vec<usize> = parts.iter().map(Vec::len).collect();
    let mut trainers = parts
        .into_iter()
        .map(|examples| trainer(profile, examples, seed, 1))
        .collect::<Result<Vec<_>, _>>()?;
    let layout = trainers[0].layout().clone();
    let mut global = trainers[0].parameters();
    let mut server = arm.strategy.server(false);
    let mut rounds = Vec::new();
    for round in 1..=profile.rounds {
        // As the coordinator sets them (see `CoordinatorMachine`): one training config
        // per round, the seed advanced by the round number.
        let mut training = round_config(profile, seed);
        training.proximal_mu = arm.strategy.proximal_mu();
        training.seed = training.seed.wrapping_add(round);
        let request = tessera_fl::TrainRequest {
            round,
            global: std::sync::Arc::new(global.clone()),
            strategy: arm.strategy.clone(),
            config: training,
            private: false,
            patient_sampling: None,
        };
        // Sites train at once, one thread each, as in a federation (their trainers
        // were built one after another, so the models do not depend on the order).
        let updates: Vec<Option<Result<tessera_core::LocalUpdate, TrainError>>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = trainers
                    .iter_mut()
                    .map(|t| scope.spawn(|| request.run(t)))
                    .collect();
                handles.into_iter().map(|h| h.join().ok()).collect()
            });
        let mut deltas = Vec::with_capacity(trainers.len());
        for (site, update) in updates.into_iter().enumerate() {
            let update = update.ok_or_else(|| {
                ExpError::Data(format!(
                    "round {round}: site {site}'s training thread panicked"
                ))
            })??;
            let weight = match arm.weighting {
                tessera_fl::Weighting::Samples => weight_of(arm, site, update.samples),
                tessera_fl::Weighting::Uniform => 1,
            };
            let delta = arm
                .strategy
                .delta(&layout, &update.parameters, &global, false);
            deltas.push(tessera_core::SiteDelta { delta, weight });
        }
        let mean = tessera_core::weighted_mean(&deltas)
            .ok_or_else(|| ExpError::Data(format!("round {round}: no weighted update")))?;
        server.apply(&layout, &mut global, &mean);
        rounds.push(RoundLog {
            round,
            participants: trainers.len(),
            contributors: trainers.len(),
            aborted: None,
        });
    }
    let model = if arm.strategy == tessera_core::Strategy::FedBn {
        let largest = largest_site(&site_examples);
        arm.strategy
            .merge_into_local(&layout, &trainers[largest].parameters(), &global, false)
    } else {
        global
    };
    Ok(FederatedOutcome {
        model,
        rounds,
        ledger: None,
        site_examples,
        audit: None,
    })
}

/// The site with the most training examples (the last of equals).
fn largest_site(site_examples: &[usize]) -> usize {
    site_examples
        .iter()
        .enumerate()
        .max_by_key(|(_, n)| **n)
        .map_or(0, |(i, _)| i)
}

/// Runs a federated arm through the coordinator and site loops (or, for
/// `protocol = "float"`, the floating-point FedAvg of [`train_float`]).
pub fn train_federated(
    inputs: &ArmInputs<'_>,
    arm: &FederatedArm,
    ctx: &ProcessContext<'_>,
) -> Result<FederatedOutcome, ExpError> {
    if let Some(ft) = &arm.fine_tune {
        return crate::finetune::train_fine_tune(inputs, arm, ft);
    }
    let Some(protocol) = arm.protocol.fl() else {
        return train_float(inputs, arm);
    };
    let (profile, cohorts, seed) = (inputs.profile, inputs.cohorts, inputs.seed);
    let (session, dir) = (inputs.session, inputs.dir);
    let parts = partition(cohorts, arm.sites, arm.heterogeneity, seed)?;
    let site_examples: Vec<usize> = parts.iter().map(Vec::len).collect();
    let shared: Vec<Arc<Mutex<DetectorTrainer>>> = parts
        .into_iter()
        .map(|examples| Ok(Arc::new(Mutex::new(trainer(profile, examples, seed, 1)?))))
        .collect::<Result<_, ExpError>>()?;
    let (layout, initial) = {
        let first = shared[0]
            .lock()
            .map_err(|_| ExpError::Data("trainer lock poisoned".into()))?;
        (first.layout().clone(), first.parameters())
    };
    // Site identities and randomness depend on the experiment's seed and session
    // only, not on the arm: arms that differ only in protocol draw the same rounding.
    let root = RootSeed::from_experiment(seed);
    let mut dp = arm.dp.clone();
    dp.rounds = profile.rounds;
    let private = dp.mechanism != tessera_dp::Mechanism::None;
    let canaries = (arm.canaries > 0).then(|| {
        let strategy = &arm.strategy;
        crate::audit::canaries(
            &layout,
            arm.canaries,
            dp.l2_clip,
            strategy,
            private,
            (&root, session),
        )
    });
    let mut trainers: Vec<ArmSite<SharedTrainer>> = shared
        .iter()
        .enumerate()
        .map(|(i, t)| {
            ArmSite::Hospital(SharedTrainer {
                inner: t.clone(),
                layout: layout.clone(),
                weight: arm.site_weights.as_ref().and_then(|w| w.get(i).copied()),
            })
        })
        .collect();
    if let Some(c) = &canaries {
        trainers.extend(c.trainers().into_iter().map(ArmSite::Canary));
    }
    // Dropouts after local training, at a random protocol phase (deterministic).
    let dropouts = sim::dropout_schedule(
        &root,
        session,
        arm.sites,
        profile.rounds,
        arm.dropout,
        &sim::AFTER_TRAINING,
    );
    let delta = dp.delta;
    let max_weight = match &arm.site_weights {
        Some(w) => w.iter().copied().max().unwrap_or(1),
        None => site_examples.iter().copied().max().unwrap_or(1) as u64,
    };
    let config = FederationConfig::builder(session, dir.join("checkpoint.bin"))
        .strategy(arm.strategy.clone())
        .training(round_config(profile, seed))
        .protocol(protocol)
        // The threshold is planned for at least 5% dropouts.
        .rates(arm.dropout.max(0.05), 0.0)
        .codec(arm.bits, arm.clip, max_weight)
        .weighting(arm.weighting)
        // Dropouts are explicit withdrawals: the deadlines are only a backstop.
        .timeouts(Duration::from_secs(3600), Duration::from_secs(600))
        .dp(dp)
        .build()?;
    let runtime = runtime(dir)?;
    let hospitals: Vec<String> = cohorts.hospitals.iter().map(|h| h.id.clone()).collect();
    let (global, rounds, ledger, movements) = runtime.block_on(async {
        let mut fed = match arm.transport {
            Transport::Memory => {
                let transcripts = dir.join("transcripts");
                let fed = memory::start(
                    config,
                    layout.clone(),
                    initial,
                    trainers,
                    &dropouts,
                    &transcripts,
                    root,
                );
                Running::Memory(fed.await?)
            }
            Transport::Quic => {
                let fed = loopback::start(
                    config,
                    layout.clone(),
                    initial,
                    trainers,
                    &dropouts,
                    dir,
                    root,
                );
                Running::Quic(fed.await?)
            }
            Transport::Processes => {
                let fed =
                    transport::start(ctx, config, layout.clone(), initial, &hospitals, seed, dir);
                Running::Processes(fed.await?)
            }
        };
        let (rounds, movements) =
            run_rounds(fed.coordinator(), profile.rounds, canaries.is_some()).await?;
        let global = fed.coordinator().global().to_vec();
        let ledger = fed.coordinator().ledger().cloned();
        fed.finish().await?;
        Ok::<_, ExpError>((global, rounds, ledger, movements))
    })?;
    let audit = canaries
        .as_ref()
        .map(|c| crate::audit::audit(c, &movements, delta, ledger.as_ref().map(Ledger::spent)));
    // FedBN's global model has no normalisation of its own, and under DP the statistics
    // never leave the sites: evaluate the largest site's model (its own normalisation
    // statistics, the federated rest), as that site would run it.
    let model = if arm.strategy == tessera_core::Strategy::FedBn || private {
        let largest = largest_site(&site_examples);
        let local = shared[largest]
            .lock()
            .map_err(|_| ExpError::Data("trainer lock poisoned".into()))?
            .parameters();
        arm.strategy
            .merge_into_local(&layout, &local, &global, private)
    } else {
        global
    };
    Ok(FederatedOutcome {
        model,
        rounds,
        ledger,
        site_examples,
        audit,
    })
}

/// The runtime a federated arm's coordinator and sites run on (two workers: the
/// machine's cores).
pub(crate) fn runtime(dir: &std::path::Path) -> Result<tokio::runtime::Runtime, ExpError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ExpError::io(dir, e))
}

/// Runs the rounds left up to `last`; with `track`, also the global model's movement in
/// each round (what a privacy audit scores).
pub(crate) async fn run_rounds(
    coordinator: &mut Coordinator,
    last: u64,
    track: bool,
) -> Result<(Vec<RoundLog>, Vec<Vec<f32>>), ExpError> {
    let (mut rounds, mut movements) = (Vec::new(), Vec::new());
    while coordinator.next_round() <= last {
        let before = track.then(|| coordinator.global().to_vec());
        let report = coordinator.run_round().await?;
        if let Some(before) = before {
            let after = coordinator.global();
            movements.push(after.iter().zip(&before).map(|(a, b)| a - b).collect());
        }
        rounds.push(RoundLog {
            round: report.round,
            participants: report.participants.len(),
            contributors: report.contributors.len(),
            aborted: report.aborted.map(|c| c.to_string()),
        });
    }
    Ok((rounds, movements))
}
