//! The node: the shell that runs chat-core against real files (and, later, a real
//! network and clock). Everything that decides anything lives in core; this crate only
//! performs effects.

pub mod disk;
