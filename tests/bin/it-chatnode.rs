//! The tests' own build of `chatnode`, so `cargo test -p chat-tests` always runs the
//! current code (Cargo builds a package's binaries before its integration tests).

fn main() -> std::process::ExitCode {
    chat_node::cli::main()
}
