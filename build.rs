//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed) and generates the
//! tonic services. The encoded descriptor set is also written to OUT_DIR for server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/capkv.proto"];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("capkv_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".capkv.v1.RaftMessage.payload")
        .bytes(".capkv.v1.ApMessage.payload")
        .compile_fds(descriptors)?;
    Ok(())
}
