//! What a run leaves behind: a fingerprint of every event (always), a readable event log
//! (`--trace`), and a Chrome trace event file that Perfetto opens (`--chrome-trace`): a
//! track per node with role spans, messages as flows, faults and client operations.

use chat_core::machine::fnv1a64;
use chat_core::{NodeId, Time};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{self, Write};

/// Track ids in the Chrome trace: nodes use their id, these the rest.
const FAULT_TRACK: u64 = 0;
const CLIENT_TRACK_BASE: u64 = 1_000;

pub struct Tracer {
    fingerprint: u64,
    text: Option<Box<dyn Write>>,
    chrome: Option<ChromeTrace>,
    error: Option<io::Error>,
}

struct ChromeTrace {
    out: Box<dyn Write>,
    events_written: u64,
    /// The open role span of each node: (label, start).
    open_roles: BTreeMap<NodeId, (String, Time)>,
    flow_next: u64,
}

impl Tracer {
    pub fn new(text: Option<Box<dyn Write>>, chrome: Option<Box<dyn Write>>) -> Tracer {
        let chrome = chrome.map(|out| ChromeTrace {
            out,
            events_written: 0,
            open_roles: BTreeMap::new(),
            flow_next: 1,
        });
        let mut tracer = Tracer {
            fingerprint: 0xcbf2_9ce4_8422_2325,
            text,
            chrome,
            error: None,
        };
        if let Some(chrome) = tracer.chrome.as_mut() {
            let result = chrome
                .out
                .write_all(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n");
            tracer.record_io(result);
        }
        tracer
    }

    pub fn silent() -> Tracer {
        Tracer::new(None, None)
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Folds an event's identifying numbers into the fingerprint.
    pub fn digest(&mut self, words: &[u64]) {
        for word in words {
            self.fingerprint = fnv1a64_continue(self.fingerprint, &word.to_le_bytes());
        }
    }

    pub fn text_enabled(&self) -> bool {
        self.text.is_some()
    }

    pub fn chrome_enabled(&self) -> bool {
        self.chrome.is_some()
    }

    /// One line of the readable log: `t=12.345678s <what>`.
    pub fn line(&mut self, now: Time, what: impl FnOnce() -> String) {
        if let Some(text) = self.text.as_mut() {
            let result = writeln!(text, "t={now} {}", what());
            self.record_io(result);
        }
    }

    pub fn name_tracks(&mut self, nodes: u64, clients: usize) {
        let mut names: Vec<(u64, String)> = (1..=nodes).map(|n| (n, format!("n{n}"))).collect();
        names.push((FAULT_TRACK, "faults".to_string()));
        names.extend((0..clients).map(|c| (CLIENT_TRACK_BASE + c as u64, format!("client c{c}"))));
        for (tid, name) in names {
            self.chrome_event(json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}}));
            self.chrome_event(json!({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid, "args": {"sort_index": tid}}));
        }
    }

    /// A node's role changed (or it crashed: `None`).
    pub fn role(&mut self, now: Time, node: NodeId, label: Option<String>) {
        let Some(chrome) = self.chrome.as_mut() else {
            return;
        };
        let previous = chrome.open_roles.remove(&node);
        if let Some((old_label, start)) = &previous {
            if Some(old_label) == label.as_ref() {
                chrome.open_roles.insert(node, (old_label.clone(), *start));
                return;
            }
        }
        if let Some(new_label) = label {
            chrome.open_roles.insert(node, (new_label, now));
        }
        if let Some((old_label, start)) = previous {
            let dur = now.saturating_since_us(start).max(1);
            self.chrome_event(json!({"name": old_label, "cat": "role", "ph": "X", "ts": start.0, "dur": dur, "pid": 1, "tid": node.0}));
        }
    }

    /// A message sent at `sent` and delivered at `now`, drawn as a flow between tracks.
    pub fn message(
        &mut self,
        sent: Time,
        now: Time,
        from: NodeId,
        to: NodeId,
        name: &str,
        detail: &str,
    ) {
        let Some(chrome) = self.chrome.as_mut() else {
            return;
        };
        let id = chrome.flow_next;
        chrome.flow_next += 1;
        let events = [
            json!({"name": name, "cat": "msg", "ph": "X", "ts": sent.0, "dur": 1, "pid": 1, "tid": from.0}),
            json!({"name": name, "cat": "msg", "ph": "s", "id": id, "ts": sent.0, "pid": 1, "tid": from.0}),
            json!({"name": name, "cat": "msg", "ph": "X", "ts": now.0, "dur": 1, "pid": 1, "tid": to.0, "args": {"message": detail}}),
            json!({"name": name, "cat": "msg", "ph": "f", "bp": "e", "id": id, "ts": now.0, "pid": 1, "tid": to.0}),
        ];
        for event in events {
            self.chrome_event(event);
        }
    }

    pub fn fault(&mut self, now: Time, what: &str) {
        self.chrome_event(json!({"name": what, "cat": "fault", "ph": "i", "s": "g", "ts": now.0, "pid": 1, "tid": FAULT_TRACK}));
    }

    /// A client operation from invocation to completion.
    pub fn client_op(&mut self, client: usize, start: Time, end: Time, name: &str, outcome: &str) {
        let dur = end.saturating_since_us(start).max(1);
        let tid = CLIENT_TRACK_BASE + client as u64;
        self.chrome_event(json!({"name": name, "cat": "client", "ph": "X", "ts": start.0, "dur": dur, "pid": 1, "tid": tid, "args": {"outcome": outcome}}));
    }

    fn chrome_event(&mut self, event: Value) {
        let Some(chrome) = self.chrome.as_mut() else {
            return;
        };
        let separator: &[u8] = if chrome.events_written == 0 {
            b""
        } else {
            b",\n"
        };
        chrome.events_written += 1;
        let result = chrome
            .out
            .write_all(separator)
            .and_then(|()| serde_json::to_writer(&mut chrome.out, &event).map_err(io::Error::from));
        self.record_io(result);
    }

    fn record_io(&mut self, result: io::Result<()>) {
        if let Err(error) = result {
            self.error.get_or_insert(error);
        }
    }

    /// Closes open spans and flushes; reports the first write error, if any.
    pub fn finish(mut self, now: Time) -> io::Result<u64> {
        let open: Vec<NodeId> = self
            .chrome
            .as_ref()
            .map(|c| c.open_roles.keys().copied().collect())
            .unwrap_or_default();
        for node in open {
            self.role(now, node, None);
        }
        if let Some(chrome) = self.chrome.as_mut() {
            let result = chrome
                .out
                .write_all(b"\n]}\n")
                .and_then(|()| chrome.out.flush());
            self.record_io(result);
        }
        if let Some(text) = self.text.as_mut() {
            let result = text.flush();
            self.record_io(result);
        }
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.fingerprint),
        }
    }
}

fn fnv1a64_continue(state: u64, bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(state, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// A stable digest of a string, for folding names into the fingerprint.
pub fn digest_str(text: &str) -> u64 {
    fnv1a64(text.as_bytes())
}
