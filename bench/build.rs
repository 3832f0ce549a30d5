//! Generates the tonic baseline of the interop service (the benchmark's only use of tonic),
//! with the vendored protoc so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_with_config(
            config,
            &["../tests/proto/interop/v1/interop.proto"],
            &["../tests/proto"],
        )?;
    println!("cargo:rerun-if-changed=../tests/proto/interop/v1/interop.proto");
    Ok(())
}
