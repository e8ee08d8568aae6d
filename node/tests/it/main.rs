//! The node's one integration-test binary.

mod storage;
