//! The commented example configs in `examples/` parse, and so does every commented
//! alternative in them (a line `# key = …` that is valid TOML on its own).

use tessera_fl::deploy::{CoordinatorFile, ModelConfig, SiteFile};

fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Commented-out `model = …` lines, uncommented.
fn alternatives(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with(&format!("{key} = ")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_example_configs_parse() {
    let coordinator = example("coordinator.toml");
    let file: CoordinatorFile = toml::from_str(&coordinator).unwrap();
    assert_eq!(file.sites, 3);
    let site = example("site.toml");
    let file: SiteFile = toml::from_str(&site).unwrap();
    assert_eq!(file.step, Some(0.01));
    #[derive(serde::Deserialize)]
    struct Model {
        model: ModelConfig,
    }
    let models: Vec<String> = alternatives(&coordinator, "model")
        .into_iter()
        .chain(alternatives(&site, "model"))
        .collect();
    assert_eq!(models.len(), 3);
    for line in models {
        let m: Model = toml::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(matches!(m.model, ModelConfig::Detector { .. }));
    }
    for key in ["training", "evaluate", "session"] {
        let lines = alternatives(&coordinator, key);
        assert_eq!(lines.len(), 1, "{key}");
        let with = format!("{coordinator}\n{}", lines[0]);
        toml::from_str::<CoordinatorFile>(&with).unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    for key in ["data", "seed", "rounds_file", "policy"] {
        let lines = alternatives(&site, key);
        assert_eq!(lines.len(), 1, "{key}");
        let file = toml::from_str::<SiteFile>(&format!("{site}\n{}", lines[0]))
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        file.policy.validate().unwrap();
    }
}
