//! Every node's `/metrics`, scraped over HTTP from real processes, parsed, and held to
//! what the test did to the cluster.

use crate::harness::{self, Cluster};
use chat_node::client::ClusterClient;
use std::collections::BTreeMap;

/// Messages the test sends, all acknowledged.
const WRITES: u64 = 20;
const NODES: u64 = 3;

/// One sample line: `name{label="value",...} number`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed page in the Prometheus text format (only what these metrics use: no
/// escaped quotes or commas inside label values).
pub(crate) struct Page {
    samples: Vec<Sample>,
}

impl Page {
    pub(crate) fn parse(text: &str) -> Page {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a value after the series");
                let value = value.parse().expect("a number");
                let (name, labels) = match series.split_once('{') {
                    None => (series, BTreeMap::new()),
                    Some((name, labels)) => {
                        let labels = labels.strip_suffix('}').expect("labels end with }");
                        let labels = labels
                            .split(',')
                            .map(|pair| {
                                let (key, value) = pair.split_once('=').expect("key=value");
                                let value = value.trim_matches('"');
                                (key.to_owned(), value.to_owned())
                            })
                            .collect();
                        (name, labels)
                    }
                };
                Sample {
                    name: name.to_owned(),
                    labels,
                    value,
                }
            })
            .collect();
        Page { samples }
    }

    /// The sum of every sample of `name` whose labels include `labels`; None if there
    /// is no such sample.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }
}

async fn scrape_all(cluster: &Cluster) -> BTreeMap<u64, Page> {
    let mut pages = BTreeMap::new();
    for id in 1..=NODES {
        let text = cluster.scrape(id).await.expect("scrape /metrics");
        pages.insert(id, Page::parse(&text));
    }
    pages
}

#[test]
fn every_node_reports_what_the_cluster_did() {
    harness::run(async {
        let cluster = Cluster::start(NODES);
        let leader = cluster.leader().await;
        let mut client = cluster.client();
        harness::register(&mut client, "alice")
            .await
            .expect("register alice");
        harness::register(&mut client, "bob")
            .await
            .expect("register bob");
        let alice = harness::login(&mut client, "alice").await;
        let term_before = client
            .status_of(&cluster.address(leader))
            .await
            .expect("status")
            .term;
        for i in 0..WRITES {
            harness::send(&mut client, &alice, "bob", &format!("message {i}"))
                .await
                .expect("send");
        }
        // A path no service has, to check that it cannot make a series of its own.
        let unknown = harness::raw_call(&cluster.address(leader), "/chat.v1.Chat/Nope", vec![])
            .await
            .expect_err("no such method");
        assert_eq!(unknown.code(), tonic::Code::Unimplemented);
        let (commit_index, _) = cluster.converged().await;
        let pages = scrape_all(&cluster).await;

        let leaders: Vec<u64> = pages
            .iter()
            .filter(|(_, page)| page.get("chat_raft_role", &[("role", "leader")]) == 1.0)
            .map(|(&id, _)| id)
            .collect();
        assert_eq!(
            leaders.len(),
            1,
            "exactly one node reports leading: {leaders:?}"
        );
        let reported_leader = leaders[0];
        let terms: Vec<f64> = pages
            .values()
            .map(|p| p.get("chat_raft_term", &[]))
            .collect();
        assert!(terms[0] >= 1.0, "terms {terms:?}");
        assert!(terms.iter().all(|&t| t == terms[0]), "terms {terms:?}");
        for (id, page) in &pages {
            let committed = page.get("chat_raft_commit_index", &[]);
            assert!(
                committed >= WRITES as f64,
                "node {id}: commit index {committed}"
            );
            assert_eq!(committed, commit_index as f64, "node {id} converged");
            assert!(page.get("chat_raft_applied_index", &[]) >= WRITES as f64);
            assert!(page.get("chat_raft_last_log_index", &[]) >= committed);
            let persists = page.get("chat_persist_duration_seconds_count", &[]);
            assert!(persists > 0.0, "node {id} wrote nothing durable?");
            assert!(page.get("chat_persist_entries_sum", &[]) >= WRITES as f64);
            assert!(page.get("chat_raft_leader_changes_total", &[]) >= 1.0);
        }

        // Every acknowledged send was answered OK by the node leading at the time.
        let send_ok: f64 = pages
            .values()
            .map(|page| {
                let labels = [
                    ("service", "chat.v1.Chat"),
                    ("method", "Send"),
                    ("code", "OK"),
                ];
                page.sum("chat_grpc_server_handled_total", &labels)
                    .unwrap_or(0.0)
            })
            .sum();
        assert!(send_ok >= WRITES as f64, "Send OK {send_ok}");
        // Without an election during the test, one leader took every write.
        let leader_page = &pages[&reported_leader];
        if reported_leader == leader && terms[0] == term_before as f64 {
            let proposals = leader_page.get("chat_proposals_total", &[]);
            assert!(proposals >= WRITES as f64, "leader's proposals {proposals}");
            let answered = leader_page.get("chat_proposal_duration_seconds_count", &[]);
            assert!(
                answered >= WRITES as f64,
                "leader's answered proposals {answered}"
            );
            let send = [("method", "Send"), ("code", "OK")];
            assert!(leader_page.get("chat_grpc_server_handled_total", &send) >= WRITES as f64);
        }
        // Login reads the password hash linearizably, on the leader.
        let reads: f64 = pages
            .values()
            .map(|p| p.get("chat_reads_total", &[("consistency", "linearizable")]))
            .sum();
        assert!(reads >= 1.0, "linearizable reads {reads}");
        let hashes: f64 = pages
            .values()
            .map(|p| p.get("chat_password_hashes_total", &[("operation", "hash")]))
            .sum();
        assert!(hashes >= 2.0, "two registrations hashed {hashes}");

        let unknown_calls = leader_page.get(
            "chat_grpc_server_handled_total",
            &[("method", "unknown"), ("code", "UNIMPLEMENTED")],
        );
        assert!(unknown_calls >= 1.0);
        assert!(
            leader_page
                .sum("chat_grpc_server_handled_total", &[("method", "Nope")])
                .is_none(),
            "a client-chosen path became a label"
        );
        // Peers reached each other: a series per peer, and the streams are up.
        for page in pages.values() {
            let peers = page
                .samples
                .iter()
                .filter(|s| s.name == "chat_peer_reconnects_total")
                .count();
            assert_eq!(peers, (NODES - 1) as usize);
            // Each other member holds a connection to this node.
            let open = page.get("chat_connections_open", &[]);
            assert!(open >= (NODES - 1) as f64, "open connections {open}");
            assert!(open <= page.get("chat_connections_limit", &[]));
        }
    });
}

#[test]
fn the_endpoint_serves_only_metrics_in_the_prometheus_text_format() {
    harness::run(async {
        let cluster = Cluster::start(1);
        cluster.leader().await;
        let address = &cluster.nodes[0].metrics_address;
        let page = harness::http_get(address, "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(page.status, 200);
        assert!(
            page.head
                .to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{}",
            page.head
        );
        assert!(page.body.contains("# TYPE chat_raft_term gauge\n"));
        let other = harness::http_get(address, "/").await.expect("GET /");
        assert_eq!(other.status, 404);
        // One client of the cluster API works as before, beside the endpoint.
        let mut client: ClusterClient = cluster.client();
        harness::register(&mut client, "carol")
            .await
            .expect("register");
    });
}
