//! A small randomized chaos run in the core harness: crashes, restarts, partitions and
//! message loss, with the harness checking safety after every event and the end state
//! checked for lost acknowledged writes. The simulator does this at scale; this keeps
//! the core honest on its own.

use crate::election::list_all;
use crate::harness::*;
use chat_core::app::CommandOutput;
use chat_core::{NodeId, RequestId, Response};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

fn chaos_run(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cluster = Cluster::new(5);
    let mut drop_rng = ChaCha8Rng::seed_from_u64(seed ^ 0xd0);
    let drop_percent = rng.random_range(0..20u32);
    cluster.set_filter(move |_| drop_rng.random_range(0..100u32) < drop_percent);
    let mut acked: Vec<String> = Vec::new();
    let mut pending: BTreeMap<RequestId, (u64, u64, String)> = BTreeMap::new();
    let mut next_client = 1u64;
    for step in 0..200 {
        match rng.random_range(0..10) {
            0 if cluster.replicas.len() > 3 => {
                let victim = *cluster
                    .replicas
                    .keys()
                    .nth(rng.random_range(0..cluster.replicas.len()))
                    .unwrap();
                cluster.crash(victim.0);
            }
            1 => {
                if let Some(down) = (1..=5).find(|id| !cluster.replicas.contains_key(&NodeId(*id)))
                {
                    cluster.restart(down);
                }
            }
            2 => cluster.isolate(rng.random_range(1..=5)),
            3 => {
                cluster.heal();
                let mut drop_rng = ChaCha8Rng::seed_from_u64(seed ^ step);
                cluster.set_filter(move |_| drop_rng.random_range(0..100u32) < drop_percent);
            }
            _ => {
                let node = *cluster
                    .replicas
                    .keys()
                    .nth(rng.random_range(0..cluster.replicas.len()))
                    .unwrap();
                let name = format!("u{step}");
                let id = cluster.write(node, next_client, 1, create(&name));
                pending.insert(id, (next_client, 1, name));
                next_client += 1;
            }
        }
        cluster.run_for(rng.random_range(1..200) * 1_000);
        // Retry what failed, with the same session and sequence number.
        let answered: Vec<RequestId> = pending
            .keys()
            .copied()
            .filter(|id| cluster.replies.contains_key(id))
            .collect();
        for id in answered {
            let (client, seq, name) = pending.remove(&id).unwrap();
            match cluster.replies[&id].clone() {
                Ok(Response::Command(CommandOutput::AccountCreated { .. })) => acked.push(name),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => {
                    let node = *cluster
                        .replicas
                        .keys()
                        .nth(rng.random_range(0..cluster.replicas.len()))
                        .unwrap();
                    let retry = cluster.write(node, client, seq, create(&name));
                    pending.insert(retry, (client, seq, name));
                }
            }
        }
    }
    cluster.heal();
    for id in 1..=5 {
        if !cluster.replicas.contains_key(&NodeId(id)) {
            cluster.restart(id);
        }
    }
    cluster.run_for(ms(3_000));
    let names = list_all(&mut cluster);
    for name in &acked {
        assert!(
            names.contains(name),
            "seed {seed}: acknowledged account {name} lost"
        );
    }
    let mut deduped = names.clone();
    deduped.dedup();
    assert_eq!(deduped, names);
    cluster.run_for(ms(1_000));
    cluster.assert_converged();
}

#[test]
fn randomized_faults_lose_no_acknowledged_write() {
    for seed in 0..40 {
        chaos_run(seed);
    }
}
