//! Compiles our minimal copy of etcd's KV service with protox (pure Rust): the machine
//! has no `protoc`. Only the client is generated.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/etcd_kv.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
