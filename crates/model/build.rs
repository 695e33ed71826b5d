//! Generates the Rust types of the event schema from `proto/omnigate/v1`, with serde
//! impls that follow the proto3 canonical JSON mapping (pbjson).

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["event.proto", "command.proto"].map(|f| root.join("omnigate/v1").join(f));
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = out.join("omnigate_descriptors.bin");

    println!("cargo:rerun-if-changed={}", root.display());
    prost_build::Config::new()
        .file_descriptor_set_path(&descriptors)
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(&files, &[&root])?;

    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        // A consumer built against this schema must still read events from a newer producer.
        .ignore_unknown_fields()
        .build(&[".omnigate"])?;
    Ok(())
}
