//! Compiles the .proto files with protox (pure Rust): the machine has no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/chat.proto", "proto/peer.proto", "proto/admin.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Decode errors are the sender's: INVALID_ARGUMENT, not INTERNAL (`codec.rs`).
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
