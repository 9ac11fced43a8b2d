//! Compiles the API with protox (pure Rust: no system `protoc`) and generates the model conversions.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-changed=../trainyard-codegen/src/lib.rs");
    println!("cargo:rerun-if-changed=../trainyard-codegen/service-model");

    let files = [
        "trainyard/v1/tuning.proto",
        "trainyard/v1/training.proto",
        "trainyard/v1/agent.proto",
        "trainyard/v1/access.proto",
    ];
    let fds = protox::compile(files, [&proto_root])?;
    tonic_prost_build::configure().btree_map(".").compile_fds(fds)?;

    let model = trainyard_codegen::ServiceModel::load()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("convert.rs");
    std::fs::write(out, trainyard_codegen::rust_conversions(&model))?;
    Ok(())
}
