//! Writes `proto/trainyard/v1/sagemaker.proto` from the service model. The Rust model and the
//! conversions are generated at build time by the crates' build scripts; the proto is committed because
//! it is the public API that other languages read. A test fails when the committed file is stale.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = trainyard_codegen::ServiceModel::load()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join("proto/trainyard/v1/sagemaker.proto");
    std::fs::write(&path, trainyard_codegen::proto(&model))?;
    println!("wrote {}", path.display());
    Ok(())
}
