//! The exact message trace of a scripted 3-node election and replication. Any protocol
//! change shows up here as a reviewed diff (`cargo insta review`).

use crate::harness::*;

#[test]
fn three_node_election_and_replication_trace() {
    let mut cluster = Cluster::new(3);
    cluster.tracing = true;
    let leader = cluster.wait_for_leader();
    cluster.run_for(ms(60));
    let request = cluster.write(leader, 1, 1, create("alice"));
    cluster.outcome(request).expect("committed");
    cluster.run_for(ms(60));
    insta::assert_snapshot!(cluster.trace.join("\n"));
}
