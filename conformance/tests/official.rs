//! The official Connect conformance suite (`connectconformance`, pinned by
//! `conformance/runner/go.mod`) against our server and our client, for what
//! `conformance/config.yaml` declares. `scripts/test.sh` builds the runner first; a missing
//! runner fails these tests (never skips them).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the conformance crate sits in the repository")
        .to_path_buf()
}

fn runner() -> PathBuf {
    let runner = repo_root().join("target/go-tools/connectconformance");
    assert!(
        runner.exists(),
        "{} is missing: scripts/test.sh builds it (or run `scripts/conformance.sh build`)",
        runner.display()
    );
    runner
}

/// Runs the runner in `mode` against `binary`; returns its report (stdout and stderr).
fn run(mode: &str, binary: &str) -> String {
    let root = repo_root();
    let mut command = Command::new(runner());
    command
        .current_dir(&root)
        .args(["--mode", mode, "--conf"])
        .arg(root.join("conformance/config.yaml"))
        .arg("--known-failing")
        .arg(format!(
            "@{}",
            root.join("conformance/known-failing.yaml").display()
        ));
    // (The runner runs a client's cases in parallel itself.)
    if mode == "server" {
        command.args(["--parallel", "2"]);
    }
    let output = command
        .arg("--")
        .arg(binary)
        .output()
        .expect("the conformance runner starts");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The summary, with the counts the README quotes.
    for line in report
        .lines()
        .filter(|l| l.starts_with("Total cases") || l.contains("passed") || l.starts_with("FAILED"))
    {
        println!("{mode}: {line}");
    }
    assert!(
        output.status.success(),
        "connectconformance --mode {mode} failed:\n{report}"
    );
    report
}

/// The number of cases the runner reports as passed (it fails the run on any failure).
fn passed(report: &str) -> usize {
    report
        .lines()
        .find_map(|l| l.strip_suffix(" failed"))
        .and_then(|l| l.split(" passed").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_official_suite_passes_against_our_server() {
    let report = run("server", env!("CARGO_BIN_EXE_conformance-server"));
    // 1,624 cases in v1.0.7 for what config.yaml declares; fewer would mean the config lost
    // features.
    assert!(passed(&report) >= 1_600, "{report}");
}

#[test]
fn the_official_suite_passes_against_our_client() {
    let report = run("client", env!("CARGO_BIN_EXE_conformance-client"));
    // 1,764 cases in v1.0.7.
    assert!(passed(&report) >= 1_750, "{report}");
}
