pub mod app;
pub mod entry;
pub mod types;
