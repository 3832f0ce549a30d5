//! The plugin binary as protoc and buf run it: errors reported through protoc, template
//! overrides, `buf generate` producing the committed code, and the "add an RPC" workflow.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use prost::Message as _;
use prost_types::compiler::CodeGeneratorResponse;

const PLUGIN: &str = env!("CARGO_BIN_EXE_protoc-gen-connect-plugin");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn scratch(name: &str) -> PathBuf {
    let dir = repo()
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the vendored protoc with our plugin; returns protoc's output.
fn protoc(proto_root: &Path, files: &[&str], out: &Path, parameter: &str) -> Output {
    Command::new(protoc_bin_vendored::protoc_bin_path().unwrap())
        .arg(format!("--plugin=protoc-gen-connect-plugin={PLUGIN}"))
        .arg(format!("--connect-plugin_out={}", out.display()))
        .arg(format!("--connect-plugin_opt={parameter}"))
        .arg(format!("-I{}", proto_root.display()))
        .arg(format!(
            "-I{}",
            protoc_bin_vendored::include_path().unwrap().display()
        ))
        .args(files)
        .output()
        .unwrap()
}

fn kv_proto_root() -> PathBuf {
    repo().join("examples/kv/proto")
}

#[test]
fn unknown_parameter_is_reported_through_protoc_with_the_valid_ones() {
    let out = scratch("bad-param");
    let output = protoc(
        &kv_proto_root(),
        &["kv/v1/kv.proto"],
        &out,
        "paths=source_relative",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("unknown parameter `paths`"), "{stderr}");
    assert!(
        stderr.contains("valid parameters: include_file=NAME"),
        "{stderr}"
    );
}

#[test]
fn methods_that_collide_in_rust_are_reported_by_name() {
    let out = scratch("collision");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let output = protoc(&root, &["collision.proto"], &out, "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "service invalid.v1.Clash: methods GetFoo and GetFOO both become the Rust method `get_foo`"
        ),
        "{stderr}"
    );
}

#[test]
fn garbage_on_stdin_is_an_error_response_not_a_crash() {
    let mut child = Command::new(PLUGIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"\xff\xff\xff not protobuf").unwrap();
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "bad input is reported, not a crash"
    );
    let response = CodeGeneratorResponse::decode(output.stdout.as_slice()).unwrap();
    assert!(
        response
            .error()
            .contains("cannot decode the CodeGeneratorRequest"),
        "{}",
        response.error()
    );
    assert_eq!(response.supported_features(), 1, "FEATURE_PROTO3_OPTIONAL");
}

#[test]
fn version_flag() {
    let output = Command::new(PLUGIN).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("protoc-gen-connect-plugin {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn template_overrides_replace_the_builtin_and_broken_ones_are_reported() {
    let templates = scratch("templates");
    let builtin = std::fs::read_to_string(repo().join("templates/service.rs.hbs")).unwrap();
    std::fs::write(
        templates.join("service.rs.hbs"),
        format!(
            "/// Custom marker for {{{{full_name}}}}.\npub const CUSTOM_MARKER: () = ();\n{builtin}"
        ),
    )
    .unwrap();
    let out = scratch("templates-out");
    let output = protoc(
        &kv_proto_root(),
        &["kv/v1/kv.proto"],
        &out,
        &format!("templates={}", templates.display()),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let code = std::fs::read_to_string(out.join("kv.v1.rs")).unwrap();
    assert!(
        code.contains("/// Custom marker for kv.v1.KVService."),
        "{code}"
    );

    // A misspelt variable is an error (strict mode), not an empty string.
    std::fs::write(
        templates.join("service.rs.hbs"),
        "pub const X: &str = \"{{ful_name}}\";",
    )
    .unwrap();
    let output = protoc(
        &kv_proto_root(),
        &["kv/v1/kv.proto"],
        &out,
        &format!("templates={}", templates.display()),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("rendering service kv.v1.KVService") && stderr.contains("ful_name"),
        "{stderr}"
    );

    let output = protoc(
        &kv_proto_root(),
        &["kv/v1/kv.proto"],
        &out,
        "templates=/no/such/dir",
    );
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("templates=/no/such/dir is not a directory")
    );
}

fn buf() -> PathBuf {
    let buf = repo().join("node_modules/.bin/buf");
    assert!(
        buf.exists(),
        "{} is missing: run `npm ci` at the repository root (scripts/test.sh does it)",
        buf.display()
    );
    buf
}

fn read_dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn buf_generate_reproduces_the_committed_kv_code() {
    let out = scratch("buf-generate");
    let template = format!(
        r#"{{"version":"v2","plugins":[{{"local":"{PLUGIN}","out":"{}","strategy":"all"}}]}}"#,
        out.display()
    );
    let output = Command::new(buf())
        .current_dir(repo())
        .args(["generate", "examples/kv/proto", "--template", &template])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "buf generate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = read_dir_files(&out);
    let committed = read_dir_files(&repo().join("examples/kv/src/gen"));
    assert_eq!(
        generated.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        committed.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for ((name, a), (_, b)) in generated.iter().zip(&committed) {
        assert!(
            a == b,
            "buf generate output for {name} differs from the committed file"
        );
    }
}

/// The workflow a new developer follows: add an RPC to kv.proto, generate, build. The
/// existing implementation (which knows nothing of the new RPC) must still compile, and the
/// new client method must exist.
#[test]
fn adding_an_rpc_to_kv_proto_gives_compiling_code() {
    let dir = scratch("add-rpc");
    let proto_dir = dir.join("proto/kv/v1");
    std::fs::create_dir_all(&proto_dir).unwrap();
    let original = std::fs::read_to_string(kv_proto_root().join("kv/v1/kv.proto")).unwrap();
    let extended = original.replacen(
        "service KVService {",
        "service KVService {\n  // Count returns how many keys start with a prefix.\n  rpc Count(CountRequest) returns (CountResponse);",
        1,
    ) + "\nmessage CountRequest {\n  string prefix = 1;\n}\n\nmessage CountResponse {\n  uint64 count = 1;\n}\n";
    std::fs::write(proto_dir.join("kv.proto"), extended).unwrap();
    let generated = dir.join("src/gen");
    std::fs::create_dir_all(&generated).unwrap();
    let output = protoc(&dir.join("proto"), &["kv/v1/kv.proto"], &generated, "");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "add-rpc-check"
edition = "2024"
version = "0.0.0"
publish = false

[workspace]

[dependencies]
connect-plugin = {{ path = "{runtime}" }}
prost = "0.14"
pbjson = "0.9"
pbjson-types = "0.9"
serde = "1"
"#,
            runtime = repo().join("runtime/plugin").display()
        ),
    )
    .unwrap();
    std::fs::copy(repo().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(
        dir.join("src/lib.rs"),
        r#"#[path = "gen/mod.rs"]
mod generated;
use generated::kv::v1::{CountRequest, GetRequest, GetResponse, KvService, KvServiceClient};
use connect_plugin::{Error, Request, Response};

/// An implementation written before Count existed.
pub struct Old;
impl KvService for Old {
    async fn get(&self, _: Request<GetRequest>) -> Result<Response<GetResponse>, Error> {
        Ok(Response::new(GetResponse::default()))
    }
}

pub async fn call(client: &KvServiceClient) -> Result<u64, Error> {
    Ok(client.count(CountRequest { prefix: "a".into() }).await?.into_message().count)
}
"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO"))
        .current_dir(&dir)
        .args(["check", "--quiet", "--message-format=short"])
        .env("CARGO_TARGET_DIR", repo().join("target/add-rpc-check"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the generated code with a new RPC does not compile:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
