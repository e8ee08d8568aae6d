//! Core's storage tests: the shared suite over [`MemDisk`], plus what only an in-memory
//! disk can show (crashes at every operation, counted syncs, injected faults).

mod crash;
mod mem_disk;
mod store;

use crate::storage::testing::Harness;
use crate::storage::MemDisk;

fn mem_harness() -> Harness<MemDisk> {
    // A restart without a crash sees exactly what the process saw.
    Harness::new(MemDisk::new, |disk| disk)
}

mod suite {
    use super::mem_harness;
    crate::storage_suite_tests!(mem_harness());
}
