//! The simulator's own tests: determinism, checkers that can fail, traces, and every
//! regression scenario under `seeds/`.

mod checkers;
mod determinism;
mod liveness;
mod seeds;
