//! The tests' own build of `chatctl` (see `it-chatnode.rs`).

fn main() -> std::process::ExitCode {
    chat_node::ctl::main()
}
