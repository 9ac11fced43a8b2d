//! Generates the API shapes and their structural validation from SageMaker's service model.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../trainyard-codegen/src/lib.rs");
    println!("cargo:rerun-if-changed=../trainyard-codegen/service-model");
    let model = trainyard_codegen::ServiceModel::load()?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("api.rs");
    std::fs::write(out, trainyard_codegen::rust_model(&model))?;
    Ok(())
}
