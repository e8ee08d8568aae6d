//! `chatnode`: see [`chat_node::cli`].

fn main() -> std::process::ExitCode {
    chat_node::cli::main()
}
