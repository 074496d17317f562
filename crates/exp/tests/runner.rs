//! The runner end to end on a small registry: the smoke experiment, resume after an
//! interruption, and invalid experiment files.

use std::path::{Path, PathBuf};
use tessera_data::Registry;
use tessera_exp::{Experiment, ProfileName, RunOptions, Shard, assemble_report, run};

/// A tiny registry (tests/smoke-datasets.toml): two training sites and one external
/// cohort.
const REGISTRY: &str = include_str!("../../../tests/smoke-datasets.toml");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-exp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn registry(dir: &Path) -> Registry {
    let path = dir.join("datasets.toml");
    std::fs::write(&path, REGISTRY).unwrap();
    Registry::load(&path).unwrap()
}

fn smoke(registry: &Registry) -> Experiment {
    Experiment::load(&workspace().join("experiments/smoke.toml"), registry).unwrap()
}

fn options(dir: &Path, runs: &str, stop_after: Option<usize>) -> RunOptions {
    RunOptions {
        profile: ProfileName::Quick,
        data_root: dir.join("data"),
        runs_root: dir.join(runs),
        report_dir: Some(dir.join(format!("{runs}-report"))),
        stop_after,
        progress: false,
        site_processes: Default::default(),
        shard: None,
    }
}

#[test]
fn the_smoke_experiment_runs_end_to_end_and_resumes_identically() {
    let dir = tmp("smoke");
    let reg = registry(&dir);
    let exp = smoke(&reg);
    let names: Vec<&str> = exp.arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "single-hk-a",
            "single-hk-b",
            "ensemble",
            "pooled",
            "fedavg[protocol=plaintext]",
            "fedavg[protocol=secagg]",
            "fedavg[protocol=float]",
            "ddg",
            "public-only",
            "fine-tune-dp"
        ]
    );

    // Uninterrupted run.
    let full = run(&exp, &reg, REGISTRY, &options(&dir, "full", None)).unwrap();
    assert!(full.complete);
    assert_eq!((full.computed, full.reused), (10, 0));
    for r in &full.results {
        // Three cohorts, each under the strict and the authors' protocol.
        assert_eq!(r.evals.len(), 6, "{}", r.arm.name);
        for e in &r.evals {
            let s = &e.summary;
            assert_eq!(s.patients, 1);
            assert_eq!(e.patients.len(), 1, "per-patient metrics are kept");
            assert!(
                s.false_positives_per_slice
                    .is_some_and(|f| f.mean.is_finite())
            );
            let sweep = match e.protocol {
                tessera_eval::EvalProtocol::Strict => 50,
                tessera_eval::EvalProtocol::Authors => 100,
            };
            assert_eq!(e.froc.len(), sweep);
        }
    }
    // Float FedAvg trains the same sites with the same seeds but averages unquantised
    // updates: a different model from the codec's, with one contributor per site.
    let model = |name: &str| {
        let r = full.results.iter().find(|r| r.arm.name == name).unwrap();
        r.model_sha256.clone().unwrap()
    };
    assert_eq!(
        model("fedavg[protocol=plaintext]"),
        model("fedavg[protocol=secagg]")
    );
    assert_ne!(
        model("fedavg[protocol=plaintext]"),
        model("fedavg[protocol=float]")
    );
    // Lesions are found in the evaluated slices, so sensitivity and mAP are defined.
    assert!(full.results.iter().all(|r| {
        r.evals
            .iter()
            .all(|e| e.summary.sensitivity.is_some() && e.summary.mean_average_precision.is_some())
    }));
    let ddg = full.results.iter().find(|r| r.arm.name == "ddg").unwrap();
    let ledger = ddg.ledger.as_ref().expect("DP arm has a ledger");
    assert_eq!(ledger.entries.len(), 2);
    assert!(ledger.spent() <= 1000.0 && ledger.spent() > 900.0);
    // Patient-level DP: the ledger accounts the secret sampling; the fine-tuned model
    // keeps the public backbone, so it differs from the public model only in its heads.
    let ft = full
        .results
        .iter()
        .find(|r| r.arm.name == "fine-tune-dp")
        .unwrap();
    let ledger = ft
        .ledger
        .as_ref()
        .expect("patient-level DP arm has a ledger");
    assert_eq!(ledger.accountant, "rdp-subsampled");
    assert!(ledger.entries.iter().all(|e| e.sampling_rate == 0.5));
    assert!(
        ledger.spent() <= 8.0 && ledger.spent() > 7.5,
        "{}",
        ledger.spent()
    );
    assert_ne!(model("public-only"), model("fine-tune-dp"));
    let secagg = full
        .results
        .iter()
        .find(|r| r.arm.name == "fedavg[protocol=secagg]")
        .unwrap();
    assert_eq!(secagg.rounds.len(), 2);
    assert!(
        secagg
            .rounds
            .iter()
            .all(|r| r.aborted.is_none() && r.contributors == 2)
    );
    // The longitudinal series (one patient, two scans) is evaluated.
    assert_eq!(full.results[0].series.len(), 1);
    assert_eq!(full.results[0].series[0].points.len(), 2);
    let report = dir.join("full-report");
    for file in [
        "README.md",
        "tables/summary.md",
        "tables/cn-sz.md",
        "tables/cn-sz.tex",
        "tables/cn-sz-authors.md",
        "tables/summary-authors.md",
        "tables/burden.md",
        "tables/hk-a.md",
        "figures/froc-cn-sz.png",
        "figures/froc-cn-sz.svg",
        "figures/epsilon-utility.png",
        "figures/lesion-burden.svg",
        "ledgers/ddg.json",
    ] {
        let path = report.join(file);
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 100),
            "{}",
            path.display()
        );
    }
    let readme = std::fs::read_to_string(report.join("README.md")).unwrap();
    assert!(
        readme.contains("synthetic cohorts") && readme.contains("claims"),
        "{readme}"
    );
    assert!(readme.contains("Longitudinal lesion burden (held-out patients)"));
    // One patient per cohort: too little evidence for a verdict on the paired claims.
    let pooled = readme
        .lines()
        .find(|l| l.starts_with("1. *Federated ≈ pooled"))
        .unwrap();
    assert!(
        pooled.contains("**cannot be assessed** (too little evidence"),
        "{pooled}"
    );
    for file in ["manifest.json", "results.json", "results.csv"] {
        assert!(full.dir.join(file).exists(), "{file}");
    }
    for file in ["manifest.json", "results.csv"] {
        assert!(report.join(file).exists(), "the report carries {file}");
    }
    let manifest = std::fs::read_to_string(full.dir.join("manifest.json")).unwrap();
    for key in [
        "ATEN_CPU_CAPABILITY",
        "MKL_CBWR",
        "cpu_model",
        "libtorch",
        "training_threads",
    ] {
        assert!(manifest.contains(key), "{key} not in {manifest}");
    }

    // Interrupted after one arm, then resumed: nothing finished is recomputed and the
    // results equal the uninterrupted run's.
    let first = run(&exp, &reg, REGISTRY, &options(&dir, "resumed", Some(1))).unwrap();
    assert!(!first.complete);
    assert_eq!((first.computed, first.reused), (1, 0));
    let second = run(&exp, &reg, REGISTRY, &options(&dir, "resumed", None)).unwrap();
    assert!(second.complete);
    assert_eq!((second.computed, second.reused), (9, 1));
    // The distributed noise and every model are seeded, so the runs agree exactly.
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(
        read(&full.dir.join("results.json")),
        read(&second.dir.join("results.json"))
    );
    assert_eq!(
        read(&full.dir.join("results.csv")),
        read(&second.dir.join("results.csv"))
    );
    // A third run reuses everything.
    let third = run(&exp, &reg, REGISTRY, &options(&dir, "resumed", None)).unwrap();
    assert_eq!((third.computed, third.reused), (0, 10));

    sharded_runs_equal_the_local_run(&dir, &reg, &exp, &read(&full.dir.join("results.json")));
}

/// Shards fill one run directory, the report assembles from what has finished and names
/// the rest, and the finished run equals the unsharded one.
fn sharded_runs_equal_the_local_run(dir: &Path, reg: &Registry, exp: &Experiment, full: &str) {
    let groups = tessera_exp::shard::groups(exp);
    // The ensemble travels with its members; every other arm is its own group.
    assert_eq!(
        groups,
        vec![
            vec![0, 1, 2],
            vec![3],
            vec![4],
            vec![5],
            vec![6],
            vec![7],
            vec![8],
            vec![9]
        ]
    );
    let sharded = |k: usize| {
        let mut o = options(dir, "sharded", None);
        o.shard = Some(Shard::new(k, 3).unwrap());
        o
    };
    let one = run(exp, reg, REGISTRY, &sharded(1)).unwrap();
    assert_eq!(
        one.computed, 5,
        "groups 1, 4 and 7: the ensemble with its members, fedavg[protocol=secagg] and \
         public-only"
    );
    assert!(
        !dir.join("sharded-report").exists(),
        "a shard writes no report"
    );
    let partial = assemble_report(exp, reg, REGISTRY, &options(dir, "sharded", None)).unwrap();
    assert_eq!(
        partial.missing,
        [
            "pooled",
            "fedavg[protocol=plaintext]",
            "fedavg[protocol=float]",
            "ddg",
            "fine-tune-dp"
        ]
    );
    let readme = std::fs::read_to_string(dir.join("sharded-report/README.md")).unwrap();
    assert!(readme.contains(
        "not yet finished: pooled, fedavg[protocol=plaintext], fedavg[protocol=float], ddg"
    ));
    // One after the other: torch's random generator is per process, so two arms training
    // in threads of one process interleave its draws. Shards running at once as
    // processes (as Slurm runs them) are what scripts/slurm-test.sh checks.
    let two = run(exp, reg, REGISTRY, &sharded(2)).unwrap();
    let three = run(exp, reg, REGISTRY, &sharded(3)).unwrap();
    assert_eq!(two.computed + three.computed, 5);
    let done = assemble_report(exp, reg, REGISTRY, &options(dir, "sharded", None)).unwrap();
    assert!(done.missing.is_empty());
    let merged = std::fs::read_to_string(done.dir.join("results.json")).unwrap();
    assert_eq!(merged, full);

    // A shard of another configuration (here another seed) may not join this run.
    let mut other = exp.clone();
    other.seed += 1;
    let e = run(&other, reg, REGISTRY, &sharded(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("another commit or configuration"), "{e}");
    let e = assemble_report(&other, reg, REGISTRY, &options(dir, "sharded", None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("another commit or configuration"), "{e}");
}

#[test]
fn invalid_experiment_files_name_the_key() {
    let dir = tmp("invalid");
    let reg = registry(&dir);
    let cases = [
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"a\"\nkind = \"pooled\"\nround = 3\n",
            "unknown field `round`",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"a\"\nkind = \"single-site\"\nsite = \"hk-z\"\n",
            "arm[0] (a).site = \"hk-z\" is not a training site",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"a\"\nkind = \"single-site\"\n",
            "arm[0] (a).site: missing",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"e\"\nkind = \"ensemble\"\nmembers = [\"p\", \"q\"]\n",
            "\"p\" is not an earlier single-site arm",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"f\"\nkind = \"federated\"\ndp = { mechanism = \"ddg\", epsilon = -1.0, l2_clip = 1.0 }\n",
            "dp.epsilon = -1",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"f\"\nkind = \"federated\"\nprotocol = \"plaintext\"\ndp = { mechanism = \"ddg\", epsilon = 1.0, l2_clip = 1.0 }\n",
            "arm[0] (f).dp.mechanism = \"ddg\" needs protocol",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"f\"\nkind = \"federated\"\ndropout = [0.1, 1.5]\n",
            "arm[0] (f).dropout = 1.5",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"p\"\nkind = \"pooled\"\nsites = 4\n",
            "arm[0] (p).sites: only federated arms",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"f\"\nkind = \"federated\"\nprotocol = \"float\"\ndp = { mechanism = \"ddg\", epsilon = 1.0, l2_clip = 1.0 }\n",
            "arm[0] (f).dp: DP needs the codec",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"f\"\nkind = \"federated\"\nprotocol = \"float\"\ndropout = 0.1\n",
            "arm[0] (f).dropout: float aggregation",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"f\"\nkind = \"federated\"\ncanaries = 50\n",
            "arm[0] (f).canaries: needs weighting = \"uniform\"",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"f\"\nkind = \"federated\"\nprotocol = \"plaintext\"\nweighting = \"uniform\"\ncanaries = 50\n",
            "arm[0] (f).canaries: needs protocol",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[settings]\nrounds = 0\n[[arm]]\nname = \"p\"\nkind = \"pooled\"\n",
            "settings.rounds = 0",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"p\"\nkind = \"pooled\"\nfine_tune = { public = \"public-ct\", pretrain_steps = 4 }\n",
            "arm[0] (p).fine_tune: only federated and public arms",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"p\"\nkind = \"public\"\nfine_tune = { public = \"hk-a\", pretrain_steps = 4 }\n",
            "fine_tune.public = \"hk-a\" is not a public cohort of the registry (public-ct)",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"f\"\nkind = \"federated\"\nprotocol = \"secagg\"\ndp = { mechanism = \"ddg\", unit = \"patient\", sampling_rate = 0.5, epsilon = 8.0, l2_clip = 0.1 }\n",
            "dp.unit = \"patient\" needs fine_tune",
        ),
        (
            "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"f\"\nkind = \"federated\"\nprotocol = \"secagg\"\ndp = { mechanism = \"ddg\", sampling_rate = 0.5, epsilon = 8.0, l2_clip = 0.1 }\n",
            "dp.sampling_rate",
        ),
        ("name = \"x\"\ndescription = \"d\"\n", "missing field `arm`"),
    ];
    for (text, needle) in cases {
        let err = Experiment::parse(text, &reg).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    // The path is named too.
    let path = dir.join("bad.toml");
    std::fs::write(&path, cases[1].0).unwrap();
    let err = Experiment::load(&path, &reg).unwrap_err().to_string();
    assert!(err.contains("bad.toml"), "{err}");
    // Every shipped experiment file is valid against the shipped registry.
    let shipped = Registry::load(&workspace().join("datasets.toml")).unwrap();
    for entry in std::fs::read_dir(workspace().join("experiments")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Experiment::load(&path, &shipped).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// `seeds = 2`: every arm trains once per seed, each run cached under its own key,
/// ensembles built from their own seed's members; seed 0 is the single-seed run; the
/// report gives mean ± SD and each seed's value; shards deal (seed, group) units.
#[test]
fn several_seeds_are_cached_apart_and_reported_with_their_spread() {
    let dir = tmp("seeds");
    let reg = registry(&dir);
    let text = "name = \"seeds\"\ndescription = \"d\"\nseed = 3\nseeds = 2\n\
        [settings]\nrounds = 1\nlocal_steps = 2\nbatch_size = 2\ntrain_negative_stride = 16\n\
        eval_slice_stride = 3\neval_patients = 1\n\
        [[arm]]\nname = \"single-hk-a\"\nkind = \"single-site\"\nsite = \"hk-a\"\n\
        [[arm]]\nname = \"single-hk-b\"\nkind = \"single-site\"\nsite = \"hk-b\"\n\
        [[arm]]\nname = \"ensemble\"\nkind = \"ensemble\"\nmembers = [\"single-hk-a\", \"single-hk-b\"]\n";
    let exp = Experiment::parse(text, &reg).unwrap();
    assert_eq!(exp.seeds, 2);
    let jobs = |k| Shard::new(k, 2).unwrap().jobs(&exp);
    assert!(jobs(1).iter().all(|j| j.replicate == 0) && jobs(1).len() == 3);
    assert!(jobs(2).iter().all(|j| j.replicate == 1) && jobs(2).len() == 3);

    let two = run(&exp, &reg, REGISTRY, &options(&dir, "two", None)).unwrap();
    assert_eq!((two.computed, two.reused), (6, 0));
    let runs: Vec<(&str, u64, usize)> = two
        .results
        .iter()
        .map(|r| (r.arm.name.as_str(), r.seed, r.replicate))
        .collect();
    assert_eq!(
        runs,
        [
            ("single-hk-a", 3, 0),
            ("single-hk-b", 3, 0),
            ("ensemble", 3, 0),
            ("single-hk-a", 4, 1),
            ("single-hk-b", 4, 1),
            ("ensemble", 4, 1)
        ]
    );
    assert_ne!(two.results[0].model_sha256, two.results[3].model_sha256);
    let one = run(
        &exp.clone().with_seeds(1).unwrap(),
        &reg,
        REGISTRY,
        &options(&dir, "one", None),
    )
    .unwrap();
    assert_eq!(one.results[..], two.results[..3]);
    let summary = std::fs::read_to_string(dir.join("two-report/tables/summary.md")).unwrap();
    assert!(
        summary.contains("per seed") && summary.contains(" ± "),
        "{summary}"
    );
    let readme = std::fs::read_to_string(dir.join("two-report/README.md")).unwrap();
    assert!(
        readme.contains("trained 2 times, with seeds 3–4"),
        "{readme}"
    );
    let again = run(&exp, &reg, REGISTRY, &options(&dir, "two", None)).unwrap();
    assert_eq!((again.computed, again.reused), (0, 6));
    let e = exp.clone().with_seeds(0).unwrap_err().to_string();
    assert!(e.contains("--seeds = 0"), "{e}");
    let e = Experiment::parse(&text.replace("seeds = 2", "seeds = 0"), &reg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("seeds = 0: run each arm with at least 1 seed"),
        "{e}"
    );
}

/// An arm with canaries runs the detector federation with canary sites and reports the
/// audit's bound beside the (absent) claim.
#[test]
fn an_arm_with_canaries_is_audited() {
    let dir = tmp("canaries");
    let reg = registry(&dir);
    let text = "name = \"audit\"\ndescription = \"d\"\nseed = 3\n\
        [settings]\nrounds = 1\nlocal_steps = 1\nbatch_size = 2\ntrain_negative_stride = 16\n\
        eval_slice_stride = 6\neval_patients = 1\n\
        [[arm]]\nname = \"audited\"\nkind = \"federated\"\nprotocol = \"secagg-plus\"\n\
        weighting = \"uniform\"\ncanaries = 12\n";
    let exp = Experiment::parse(text, &reg).unwrap();
    let out = run(&exp, &reg, REGISTRY, &options(&dir, "audit", None)).unwrap();
    let audit = out.results[0].audit.as_ref().expect("an audit");
    assert_eq!((audit.canaries, audit.guesses), (12, 6));
    assert!(audit.claimed_epsilon.is_none());
    // Two hospitals and twelve canaries took part.
    assert_eq!(out.results[0].rounds[0].participants, 14);
    let table = std::fs::read_to_string(dir.join("audit-report/tables/privacy-audit.md")).unwrap();
    assert!(table.contains("| audited | 12 |"), "{table}");
}

/// Fixed site weights reach the coordinator's mean: equal weights give exactly the model
/// of uniform weighting (the codec scales each update by its weight over the largest),
/// skewed ones another model; both through the plaintext federation and float FedAvg.
#[test]
fn fixed_site_weights_weight_the_mean() {
    let dir = tmp("weights");
    let reg = registry(&dir);
    let text = "name = \"weights\"\ndescription = \"d\"\nseed = 3\n\
        [settings]\nrounds = 1\nlocal_steps = 1\nbatch_size = 2\ntrain_negative_stride = 16\n\
        eval_slice_stride = 6\neval_patients = 1\n\
        [[arm]]\nname = \"uniform\"\nkind = \"federated\"\nprotocol = \"plaintext\"\n\
        weighting = \"uniform\"\n\
        [[arm]]\nname = \"even\"\nkind = \"federated\"\nprotocol = \"plaintext\"\n\
        site_weights = [0.5, 0.5]\n\
        [[arm]]\nname = \"skewed\"\nkind = \"federated\"\nprotocol = \"plaintext\"\n\
        site_weights = [0.1, 0.9]\n";
    let exp = Experiment::parse(text, &reg).unwrap();
    let out = run(&exp, &reg, REGISTRY, &options(&dir, "weights", None)).unwrap();
    let model = |name: &str| {
        let r = out.results.iter().find(|r| r.arm.name == name).unwrap();
        r.model_sha256.clone().unwrap()
    };
    assert_eq!(model("uniform"), model("even"));
    assert_ne!(model("even"), model("skewed"));
    let bad = "name = \"x\"\ndescription = \"d\"\n[[arm]]\nname = \"f\"\nkind = \"federated\"\n\
        site_weights = [0.5, 0.3, 0.2]\n";
    let err = Experiment::parse(bad, &reg).unwrap_err().to_string();
    assert!(
        err.contains("site_weights: give one weight per training hospital (2), not 3"),
        "{err}"
    );
}
