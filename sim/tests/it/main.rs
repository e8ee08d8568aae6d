//! The simulator's own tests: determinism, checkers that can fail, traces, and every
//! regression scenario under `seeds/`.

mod budget;
mod checkers;
mod clients;
mod coverage;
mod determinism;
mod linearizability;
mod liveness;
mod nemeses;
mod seeds;
