pub mod app;
pub mod entry;
pub mod storage;
pub mod types;
