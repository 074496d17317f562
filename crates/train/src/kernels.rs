//! Pinning libtorch's CPU kernels to one instruction-set level, so that a reproduction
//! gives the same numbers on any recent x86-64 machine.
//!
//! Three runs from scratch on one machine are byte-identical, but a machine with AVX-512
//! and one with AVX2 only disagree: ATen dispatches its vectorised kernels, oneDNN its
//! convolutions and MKL its BLAS by the CPU's best instruction set, and each sums in a
//! different order. Each library has a setting that caps the level it picks; pinning all
//! three to AVX2 (which every current x86-64 server has) makes the choice independent of
//! the machine. Thread counts are fixed by the trainer (`TrainerConfig::threads`).

use std::collections::BTreeMap;

/// (variable, value) pairs that pin the kernels: ATen's CPU dispatch, oneDNN's ISA cap
/// and MKL's conditional numerical reproducibility mode.
pub const CPU_KERNEL_PINS: [(&str, &str); 3] = [
    ("ATEN_CPU_CAPABILITY", "avx2"),
    ("ONEDNN_MAX_CPU_ISA", "AVX2"),
    ("MKL_CBWR", "AVX2"),
];

/// Sets every pin the environment does not set already (a value the user set wins and
/// is recorded as set). The libraries read these when libtorch first runs a kernel.
///
/// OpenMP's own settings (`OMP_WAIT_POLICY`, `OMP_NUM_THREADS`) cannot be set here:
/// libgomp reads them when it is loaded, before `main`. Thread counts are set through
/// libtorch instead; the wait policy is left to the user (on this project's 2-core
/// machine, `OMP_WAIT_POLICY=PASSIVE` in the environment made a short single-site run
/// take 61 s instead of 36 s, for the same CPU time).
///
/// # Safety
///
/// Changes the process environment: call it first thing in `main`, before any other
/// thread exists (see [`std::env::set_var`]).
pub unsafe fn pin_cpu_kernels() {
    for (key, value) in CPU_KERNEL_PINS {
        if std::env::var_os(key).is_none() {
            // SAFETY: the caller guarantees that no other thread runs yet.
            unsafe { std::env::set_var(key, value) };
        }
    }
}

/// What a run's manifest records about how its numbers were computed: the kernel
/// settings in effect, the CPU, and the libtorch build.
pub fn numeric_environment() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (key, _) in CPU_KERNEL_PINS {
        let value = std::env::var(key).unwrap_or_else(|_| "unset".into());
        out.insert(key.to_string(), value);
    }
    out.insert(
        "cpu_model".into(),
        cpu_model().unwrap_or_else(|| "unknown".into()),
    );
    out.insert("cpu_isa".into(), best_isa().into());
    out.insert(
        "libtorch".into(),
        libtorch_build().unwrap_or_else(|| "unknown".into()),
    );
    out.insert("cuda".into(), crate::cuda_available().to_string());
    out
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The best of AVX-512, AVX2 the CPU offers (what the kernels would pick unpinned).
fn best_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
    }
    "other"
}

/// The libtorch build this binary was linked against (`build-version` of the folder
/// `LIBTORCH` named at build time, as `scripts/setup-libtorch.sh` writes it).
fn libtorch_build() -> Option<String> {
    let dir = option_env!("LIBTORCH")?;
    let version = std::fs::read_to_string(std::path::Path::new(dir).join("build-version")).ok()?;
    Some(format!("{} ({dir})", version.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_every_pin_and_the_machine() {
        let env = numeric_environment();
        for (key, _) in CPU_KERNEL_PINS {
            assert!(env.contains_key(key), "{key}");
        }
        assert!(env.contains_key("cpu_model") && env.contains_key("libtorch"));
        assert_ne!(
            env["libtorch"], "unknown",
            "built with LIBTORCH set (.cargo/config.toml)"
        );
    }
}
