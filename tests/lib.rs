//! Only the integration tests in `it/` live here.
