//! Values other parts keep for themselves (listen streams, the password hash pool,
//! inbound connections), read only when `/metrics` is scraped, so those parts carry no
//! metrics code.

use crate::connections::{self, ConnectionCounts};
use crate::hashing::HashPool;
use crate::listen::Listeners;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Values other parts keep for themselves, read when `/metrics` is scraped.
pub struct Sampled {
    pub listeners: Listeners,
    pub hashing: Arc<HashPool>,
}

impl std::fmt::Debug for Sampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampled").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// Help texts end with a period here, as `Registry::register` adds one to the others.
impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let streams = ConstGauge::new(self.listeners.count() as i64);
        streams.encode(encoder.encode_descriptor(
            "listen_streams",
            "Live Listen streams this node serves.",
            None,
            streams.metric_type(),
        )?)?;
        let counters = self.hashing.counters();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let queued = ConstGauge::new(load(&counters.waiting) as i64);
        queued.encode(encoder.encode_descriptor(
            "password_hash_queued",
            "Password hashes and checks waiting for a hash worker.",
            None,
            queued.metric_type(),
        )?)?;
        let mut hashes = encoder.encode_descriptor(
            "password_hashes",
            "Password hashes (register) and checks (login) computed.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (operation, count) in [
            ("hash", load(&counters.hashed)),
            ("verify", load(&counters.verified)),
        ] {
            let labels = OperationLabels { operation };
            ConstCounter::new(count).encode(hashes.encode_family(&labels)?)?;
        }
        let refused = ConstCounter::new(load(&counters.refused));
        refused.encode(encoder.encode_descriptor(
            "password_hash_refusals",
            "Password hashes refused because the pool's queue was full (RESOURCE_EXHAUSTED).",
            None,
            refused.metric_type(),
        )?)?;
        let abandoned = ConstCounter::new(load(&counters.abandoned));
        abandoned.encode(encoder.encode_descriptor(
            "password_hash_abandoned",
            "Queued password hashes skipped because their caller had gone.",
            None,
            abandoned.metric_type(),
        )?)?;
        if let Some(connections) = connections::counts() {
            encode_connections(&mut encoder, &connections)?;
        }
        Ok(())
    }
}

/// The inbound connection counts: per process, so in `chatnode local` every node shows
/// the same (they share the file descriptors the limit protects).
fn encode_connections(
    encoder: &mut DescriptorEncoder,
    counts: &ConnectionCounts,
) -> Result<(), std::fmt::Error> {
    let gauges = [
        (
            "connections_open",
            "Inbound gRPC connections open (this process).",
            counts.open,
        ),
        (
            "connections_pending",
            "Inbound connections that have not made their first request yet (this process).",
            counts.pending,
        ),
        (
            "connections_limit",
            "The inbound connection limit (this process).",
            counts.limit,
        ),
    ];
    for (name, help, value) in gauges {
        let gauge = ConstGauge::new(value as i64);
        gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
    }
    let counters = [
        (
            "connections_refused",
            "Connections closed at once at the limit (this process).",
            counts.refused,
        ),
        (
            "connections_evicted",
            "Pending connections closed to make room for newer ones (this process).",
            counts.evicted,
        ),
    ];
    for (name, help, value) in counters {
        let counter = ConstCounter::new(value);
        counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
    }
    Ok(())
}
