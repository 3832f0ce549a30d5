//! The committed generated code must be exactly what the generator produces today.
//!
//! Runs the real `protoc` (vendored) with the real plugin binary over `proto/` and every
//! `examples/*/proto`, and compares the output with the committed files byte for byte.
//! To refresh the committed code after changing the generator, templates or protos, run:
//!
//! ```text
//! scripts/regenerate.sh
//! ```
//! (`buf generate` at the repository root produces the same files.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every generation target of the repository: (proto root, output dir, plugin parameter).
fn targets() -> Vec<(PathBuf, PathBuf, &'static str)> {
    let root = workspace();
    let fixtures = root.join("protoc-gen-connect-plugin/tests");
    let mut targets = vec![
        (root.join("proto"), root.join("runtime/plugin/src/gen"), ""),
        // Golden output of the fixtures; it is compiled and served by tests/tests/golden.rs.
        (fixtures.join("fixtures/proto"), fixtures.join("golden"), ""),
        // The interop test service, served and called by tests/tests/interop_*.rs.
        (root.join("tests/proto"), root.join("tests/src/gen"), ""),
        // The conformance suite's protos, for the conformance server and client.
        (
            root.join("conformance/proto"),
            root.join("conformance/src/gen"),
            // The conformance crate depends on the Connect crate alone, and writes `Any` in
            // the canonical JSON form the suite's peers expect.
            "runtime_crate=::connect_plugin_rpc,no_plugin,extern_path=.google.protobuf.Any=crate::any::Any",
        ),
    ];
    let mut examples: Vec<_> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("proto").is_dir())
        .collect();
    examples.sort();
    for example in examples {
        targets.push((example.join("proto"), example.join("src/gen"), ""));
    }
    targets
}

fn protos_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Runs protoc with the plugin and returns the files it wrote, by relative path.
pub fn generate(proto_root: &Path, parameter: &str) -> BTreeMap<PathBuf, Vec<u8>> {
    let out = tempdir();
    let protoc = protoc_bin_vendored::protoc_bin_path().unwrap();
    let include = protoc_bin_vendored::include_path().unwrap();
    let status = Command::new(protoc)
        .arg(format!(
            "--plugin=protoc-gen-connect-plugin={}",
            env!("CARGO_BIN_EXE_protoc-gen-connect-plugin")
        ))
        .arg(format!("--connect-plugin_out={}", out.display()))
        .arg(format!("--connect-plugin_opt={parameter}"))
        .arg(format!("-I{}", proto_root.display()))
        .arg(format!("-I{}", include.display()))
        .args(protos_under(proto_root))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "protoc failed on {}",
        proto_root.display()
    );
    let files = read_tree(&out);
    std::fs::remove_dir_all(&out).unwrap();
    files
}

fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    if !dir.exists() {
        return files;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "connect-plugin-gen-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn committed_generated_code_matches_the_generator() {
    let mut stale = Vec::new();
    for (proto_root, out_dir, parameter) in targets() {
        let fresh = generate(&proto_root, parameter);
        assert!(!fresh.is_empty(), "no output for {}", proto_root.display());
        let committed = read_tree(&out_dir);
        for (rel, content) in &fresh {
            if committed.get(rel) != Some(content) {
                stale.push(out_dir.join(rel));
            }
        }
        for rel in committed.keys() {
            if !fresh.contains_key(rel) {
                stale.push(out_dir.join(rel));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "committed generated code is stale: {stale:#?}\nrefresh it with: scripts/regenerate.sh"
    );
}

/// Not a test: rewrites the committed generated code (`scripts/regenerate.sh` runs it).
#[test]
#[ignore = "writes the committed generated code: run through scripts/regenerate.sh"]
fn regenerate_committed_code() {
    for (proto_root, out_dir, parameter) in targets() {
        let fresh = generate(&proto_root, parameter);
        assert!(!fresh.is_empty(), "no output for {}", proto_root.display());
        if out_dir.exists() {
            std::fs::remove_dir_all(&out_dir).unwrap();
        }
        for (rel, content) in &fresh {
            let path = out_dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    }
}
