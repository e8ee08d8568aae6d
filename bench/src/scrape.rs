//! Reads a server's Prometheus text endpoint (`GET /metrics`): chatnode's
//! `--metrics-addr`, or an etcd member's client URL, which serves `/metrics` too. Only
//! what the fill reports is looked up: how many leader changes each member has seen,
//! and its Raft term where the system exports it.
//!
//! The request is plain HTTP/1.0 over one TCP connection (the server closes it after
//! the page), so no HTTP client library is needed for a page of text.

use crate::System;
use anyhow::{bail, Context};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A scrape that takes longer counts as failed: the member is down or stalled.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// A metrics page is tens of kilobytes; more is not a metrics page.
const PAGE_BYTES_MAX: u64 = 4 * 1_024 * 1_024;

/// The counter of leader changes a member has seen. Ours: `chat_raft_leader_changes` (each
/// new (leader, term) pair the replica learns of); etcd's: the same, by its own count.
fn leader_changes_metric(system: System) -> &'static str {
    match system {
        System::Chat => "chat_raft_leader_changes_total",
        System::Etcd => "etcd_server_leader_changes_seen_total",
    }
}

/// The member's current term, where exported (etcd 3.4 has no such metric).
fn term_metric(system: System) -> Option<&'static str> {
    match system {
        System::Chat => Some("chat_raft_term"),
        System::Etcd => None,
    }
}

/// What one scrape of one member found.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemberView {
    pub leader_changes: u64,
    pub term: Option<u64>,
}

/// Scrapes every endpoint at once; a member that does not answer is `None`.
pub async fn scrape_all(system: System, endpoints: &[String]) -> Vec<Option<MemberView>> {
    // Each scrape is its own task, so that the members are read at the same time.
    let tasks: Vec<_> = endpoints
        .iter()
        .map(|endpoint| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                match scrape(system, &endpoint).await {
                    Ok(view) => Some(view),
                    Err(error) => {
                        eprintln!("chatbench: metrics of {endpoint}: {error:#}");
                        None
                    }
                }
            })
        })
        .collect();
    let mut views = Vec::with_capacity(tasks.len());
    for task in tasks {
        views.push(task.await.ok().flatten());
    }
    views
}

async fn scrape(system: System, endpoint: &str) -> anyhow::Result<MemberView> {
    let page = tokio::time::timeout(SCRAPE_TIMEOUT, get_metrics(endpoint))
        .await
        .context("timed out")??;
    let leader_changes = value_of(&page, leader_changes_metric(system))
        .with_context(|| format!("no {}", leader_changes_metric(system)))?;
    let term = match term_metric(system) {
        Some(name) => Some(value_of(&page, name).with_context(|| format!("no {name}"))?),
        None => None,
    };
    Ok(MemberView {
        leader_changes,
        term,
    })
}

async fn get_metrics(endpoint: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(endpoint).await?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream
        .take(PAGE_BYTES_MAX)
        .read_to_end(&mut response)
        .await?;
    let text = String::from_utf8(response).context("the page is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of the HTTP header")?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        bail!("answered {status_line:?}");
    }
    Ok(body.to_owned())
}

/// The value of metric `name` in a Prometheus text page, summed over its label sets;
/// None when no sample has that name.
fn value_of(page: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name` must be the whole metric name: labels or the value follow it.
        let rest = match rest.chars().next() {
            Some('{') => rest.split_once('}').map_or("", |(_, after)| after),
            Some(' ') => rest,
            _ => continue,
        };
        let value: f64 = match rest.split_whitespace().next().map(str::parse) {
            Some(Ok(value)) => value,
            _ => continue,
        };
        // Counters and terms are whole numbers, exported as floats by some libraries.
        *found.get_or_insert(0) += value as u64;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP raft_term The replica's current term\n\
        # TYPE raft_term gauge\n\
        raft_term 7\n\
        raft_term_other 99\n\
        # TYPE raft_leader_changes counter\n\
        raft_leader_changes_total 3\n\
        etcd_server_leader_changes_seen_total{x=\"y\"} 2\n\
        etcd_server_leader_changes_seen_total{x=\"z\"} 1.0\n";

    #[test]
    fn a_metric_is_found_by_its_whole_name() {
        assert_eq!(value_of(PAGE, "raft_term"), Some(7));
        assert_eq!(value_of(PAGE, "raft_leader_changes_total"), Some(3));
        assert_eq!(value_of(PAGE, "raft_leader_changes"), None);
    }

    #[test]
    fn label_sets_add_up() {
        assert_eq!(
            value_of(PAGE, "etcd_server_leader_changes_seen_total"),
            Some(3)
        );
    }
}
