//! `tessera privacy epsilon|plan` as a script would call them.

mod common;

use common::tessera;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = tessera().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn json(args: &[&str]) -> serde_json::Value {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn epsilon_and_plan_print_json_with_the_accountant() {
    // σ = 10, 100 rounds, δ = 1e-5: PLD 4.377 (dp_accounting), zCDP 4.728.
    let best = json(&[
        "privacy",
        "epsilon",
        "--noise-multiplier",
        "10",
        "--rounds",
        "100",
        "--json",
    ]);
    assert_eq!(best["accountant"], "pld");
    assert!(
        (best["epsilon"].as_f64().unwrap() - 4.377).abs() < 1e-3,
        "{best}"
    );
    let zcdp = json(&[
        "privacy",
        "epsilon",
        "--noise-multiplier",
        "10",
        "--rounds",
        "100",
        "--accountant",
        "zcdp",
        "--json",
    ]);
    assert!(
        (zcdp["epsilon"].as_f64().unwrap() - 4.728).abs() < 1e-3,
        "{zcdp}"
    );
    let plan = json(&[
        "privacy",
        "plan",
        "--epsilon",
        "10",
        "--rounds",
        "20",
        "--json",
    ]);
    let z = plan["noise_multiplier"].as_f64().unwrap();
    assert!(
        plan["epsilon"].as_f64().unwrap() <= 10.0 && (2.0..2.4).contains(&z),
        "{plan}"
    );
    // σ with a sensitivity is the same as their ratio.
    let sigma = json(&[
        "privacy",
        "epsilon",
        "--sigma",
        "20",
        "--l2-sensitivity",
        "2",
        "--rounds",
        "100",
        "--json",
    ]);
    assert_eq!(sigma["epsilon"], best["epsilon"]);
}

#[test]
fn impossible_parameters_are_one_line_naming_the_argument() {
    for (args, word) in [
        (
            vec!["--noise-multiplier", "0", "--rounds", "10"],
            "noise multiplier",
        ),
        (vec!["--noise-multiplier", "1", "--rounds", "0"], "rounds"),
        (
            vec![
                "--noise-multiplier",
                "1",
                "--rounds",
                "10",
                "--sampling-rate",
                "1.5",
            ],
            "sampling rate",
        ),
        (
            vec!["--noise-multiplier", "1", "--rounds", "10", "--delta", "1"],
            "delta",
        ),
        (vec!["--rounds", "10"], "--noise-multiplier"),
        (
            vec![
                "--mechanism",
                "discrete-gaussian-sum",
                "--sigma",
                "3",
                "--l2-sensitivity",
                "1",
                "--dim",
                "8",
                "--rounds",
                "10",
                "--accountant",
                "pld",
            ],
            "Gaussian mechanism only",
        ),
    ] {
        let mut all = vec!["privacy", "epsilon"];
        all.extend(args);
        let (code, out, err) = run(&all);
        assert_eq!(code, 1, "{out}{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(word), "{err}");
    }
}

/// The patient unit's accounting from the command line: the sum of discrete Gaussians
/// with secret Poisson sampling is accounted by `rdp` (the general subsampling bound),
/// and sampling fewer patients costs less ε.
#[test]
fn sampled_discrete_gaussian_sums_are_accounted_with_rdp() {
    let eps = |rate: &str| {
        let (code, out, err) = run(&[
            "privacy",
            "epsilon",
            "--mechanism",
            "discrete-gaussian-sum",
            "--sigma",
            "2000",
            "--l2-sensitivity",
            "1000",
            "--dim",
            "1024",
            "--contributors",
            "2",
            "--rounds",
            "15",
            "--sampling-rate",
            rate,
            "--json",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let accountant = v["accountant"].as_str().unwrap().to_string();
        (v["epsilon"].as_f64().unwrap(), accountant)
    };
    let (tenth, a) = eps("0.1");
    assert_eq!(a, "rdp");
    let (all, _) = eps("1");
    assert!(tenth < 0.5 * all, "{tenth} vs {all}");
}
