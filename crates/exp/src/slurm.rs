//! Running a reproduction on a Slurm cluster: one job array whose task K runs
//! `tessera reproduce --shard K/N` into the shared run directory, and one report job
//! that waits for the array (`afterany`, so a failed shard still leaves a report that
//! names what is missing).
//!
//! The scripts use absolute paths (the binary, the working directory and every path
//! argument), and Slurm's default `--export=ALL` carries the submitting shell's
//! environment (libtorch's library path among it) to the tasks.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ExpError, write_atomic};

/// What the job scripts run.
#[derive(Clone, Debug)]
pub struct SlurmJob {
    /// The `tessera` binary the tasks run.
    pub binary: PathBuf,
    /// Working directory of every task.
    pub workdir: PathBuf,
    /// `reproduce` arguments every task shares (profile, registry, data, runs, out and
    /// the experiment), already absolute where they are paths.
    pub args: Vec<String>,
    /// Number of shards (array tasks).
    pub shards: usize,
    /// The experiment's name, for job names.
    pub name: String,
    /// Extra `#SBATCH` lines' arguments, e.g. `--partition=gpu`.
    pub sbatch_args: Vec<String>,
}

/// The two scripts written for a job.
#[derive(Clone, Debug)]
pub struct SlurmScripts {
    pub array: PathBuf,
    pub report: PathBuf,
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn header(job: &SlurmJob, name: &str, logs: &Path, pattern: &str) -> String {
    let mut out = String::from("#!/bin/bash\n");
    out.push_str(&format!("#SBATCH --job-name={}\n", quote(name)));
    out.push_str(&format!(
        "#SBATCH --output={}\n",
        quote(&logs.join(pattern).to_string_lossy())
    ));
    for a in &job.sbatch_args {
        out.push_str(&format!("#SBATCH {}\n", quote(a)));
    }
    out
}

fn command_line(job: &SlurmJob, extra: &[&str]) -> String {
    let mut words = vec![quote(&job.binary.to_string_lossy()), "reproduce".into()];
    words.extend(extra.iter().map(|s| s.to_string()));
    words.extend(job.args.iter().map(|a| quote(a)));
    words.join(" ")
}

/// The array script and the report script's text.
pub fn scripts(job: &SlurmJob, logs: &Path) -> (String, String) {
    let cd = format!(
        "set -euo pipefail\ncd {}\n",
        quote(&job.workdir.to_string_lossy())
    );
    let mut array = header(job, &format!("tessera-{}", job.name), logs, "shard-%a.out");
    array.push_str(&format!("#SBATCH --array=1-{}\n", job.shards));
    array.push_str(&cd);
    array.push_str(&format!(
        "exec {}\n",
        command_line(
            job,
            &[
                "--shard",
                &format!("\"$SLURM_ARRAY_TASK_ID/{}\"", job.shards)
            ]
        )
    ));
    let mut report = header(
        job,
        &format!("tessera-{}-report", job.name),
        logs,
        "report.out",
    );
    report.push_str(&cd);
    report.push_str(&format!("exec {}\n", command_line(job, &["--report"])));
    (array, report)
}

/// Writes both scripts under `dir` (`shards.sbatch`, `report.sbatch`; task logs go to
/// `dir/logs/`).
pub fn write_scripts(job: &SlurmJob, dir: &Path) -> Result<SlurmScripts, ExpError> {
    if job.shards == 0 {
        return Err(ExpError::Config("--shards must be at least 1".into()));
    }
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| ExpError::io(&logs, e))?;
    let (array_text, report_text) = scripts(job, &logs);
    let out = SlurmScripts {
        array: dir.join("shards.sbatch"),
        report: dir.join("report.sbatch"),
    };
    write_atomic(&out.array, array_text.as_bytes())?;
    write_atomic(&out.report, report_text.as_bytes())?;
    Ok(out)
}

fn sbatch(args: &[&str]) -> Result<String, ExpError> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ExpError::Config(
                "sbatch not found: run this on a Slurm login node (or install slurm-wlm), or \
                 drop --submit and submit the written scripts yourself"
                    .into(),
            ),
            _ => ExpError::io(Path::new("sbatch"), e),
        })?;
    if !out.status.success() {
        return Err(ExpError::Config(format!(
            "sbatch {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(ExpError::Config(format!(
            "sbatch printed no job id (\"{}\")",
            text.trim()
        )));
    }
    Ok(id)
}

/// Submits the array, then the report job after it; returns both job ids.
pub fn submit(scripts: &SlurmScripts) -> Result<(String, String), ExpError> {
    let array = sbatch(&[&scripts.array.to_string_lossy()])?;
    let report = sbatch(&[
        &format!("--dependency=afterany:{array}"),
        &scripts.report.to_string_lossy(),
    ])
    .map_err(|e| {
        ExpError::Config(format!(
            "job array {array} was submitted, but its report job was not ({e}); once the \
             array is done, run `tessera reproduce --report` with the same arguments"
        ))
    })?;
    Ok((array, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> SlurmJob {
        SlurmJob {
            binary: "/opt/tessera bin/tessera".into(),
            workdir: "/home/me/tessera".into(),
            args: vec!["--profile".into(), "quick".into(), "smoke".into()],
            shards: 3,
            name: "smoke".into(),
            sbatch_args: vec!["--partition=short".into()],
        }
    }

    #[test]
    fn the_array_runs_one_shard_per_task_and_the_report_assembles() {
        let (array, report) = scripts(&job(), Path::new("/runs/smoke-quick/slurm/logs"));
        assert!(array.contains("#SBATCH --array=1-3\n"), "{array}");
        assert!(array.contains("#SBATCH --partition=short\n"));
        assert!(array.contains("cd /home/me/tessera\n"));
        assert!(
            array.contains(
                "exec '/opt/tessera bin/tessera' reproduce --shard \"$SLURM_ARRAY_TASK_ID/3\" \
                 --profile quick smoke\n"
            ),
            "{array}"
        );
        assert!(
            report.contains("reproduce --report --profile quick smoke\n"),
            "{report}"
        );
        assert!(!report.contains("--array"));
    }

    #[test]
    fn quoting_keeps_words_whole() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("--runs=/x/y"), "--runs=/x/y");
        assert_eq!(quote(""), "''");
    }
}
