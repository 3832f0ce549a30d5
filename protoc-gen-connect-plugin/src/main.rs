//! protoc plugin entry point: `CodeGeneratorRequest` on stdin, `CodeGeneratorResponse` on stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

use prost::Message as _;

fn main() -> ExitCode {
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "--version" || a == "-V")
    {
        println!("protoc-gen-connect-plugin {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("protoc-gen-connect-plugin: reading the request from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let response = protoc_gen_connect_plugin::run(&input).encode_to_vec();
    if let Err(e) = std::io::stdout()
        .write_all(&response)
        .and_then(|()| std::io::stdout().flush())
    {
        eprintln!("protoc-gen-connect-plugin: writing the response to stdout: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
