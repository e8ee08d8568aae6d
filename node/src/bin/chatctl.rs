//! `chatctl`: see [`chat_node::ctl`].

fn main() -> std::process::ExitCode {
    chat_node::ctl::main()
}
