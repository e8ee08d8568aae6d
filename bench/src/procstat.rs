//! What the servers spent during a measurement window, read from Linux's `/proc`: CPU
//! time (user + system) and context switches of every thread, summed over the server
//! processes. Divided by the operations done, these say what an operation costs a
//! cluster, which is what bounds throughput when the cluster shares its cores. Also the
//! resident memory of one server, for the scale benchmark (`chatbench fill`).

use anyhow::Context;
use std::time::Duration;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which Linux fixes at 100 for
/// user space on every architecture it exports the value for.
const USER_HZ: u64 = 100;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu: Duration,
    pub context_switches: u64,
}

impl Usage {
    pub fn since(self, earlier: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            context_switches: self
                .context_switches
                .saturating_sub(earlier.context_switches),
        }
    }
}

/// The summed usage of `pids` so far.
pub fn sample(pids: &[u32]) -> anyhow::Result<Usage> {
    let mut total = Usage::default();
    for &pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat (is server {pid} running?)"))?;
        total.cpu += cpu_of_stat(&stat).with_context(|| format!("/proc/{pid}/stat"))?;
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("cannot list /proc/{pid}/task"))?;
        for task in tasks {
            // A thread that ended between the listing and the read takes its count along.
            let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
                continue;
            };
            total.context_switches += switches_of_status(&status);
        }
    }
    Ok(total)
}

/// utime + stime of a `/proc/<pid>/stat` line (fields 14 and 15; the command name in
/// field 2 may hold spaces and parentheses, so fields are counted after its last `)`).
fn cpu_of_stat(stat: &str) -> anyhow::Result<Duration> {
    let (_, rest) = stat.rsplit_once(')').context("no command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field n is at index n - 3.
    let tick = |n: usize| -> anyhow::Result<u64> {
        let text = fields.get(n - 3).context("too few fields")?;
        text.parse()
            .with_context(|| format!("field {n} is {text:?}"))
    };
    let ticks = tick(14)? + tick(15)?;
    Ok(Duration::from_micros(ticks * 1_000_000 / USER_HZ))
}

/// The resident set size of `pid` now (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (is server {pid} running?)"))?;
    rss_bytes_of_status(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// `VmRSS:` is given in kB (KiB, whatever the unit's spelling).
fn rss_bytes_of_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1_024)
}

fn switches_of_status(status: &str) -> u64 {
    status
        .lines()
        .filter(|line| {
            line.starts_with("voluntary_ctxt_switches:")
                || line.starts_with("nonvoluntary_ctxt_switches:")
        })
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (core (1) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(cpu_of_stat(stat).expect("valid"), Duration::from_secs(3));
    }

    #[test]
    fn both_kinds_of_switches_add_up() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t5\n";
        assert_eq!(switches_of_status(status), 15);
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\tx\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(rss_bytes_of_status(status), Some(2 * 1_024 * 1_024));
        assert_eq!(rss_bytes_of_status("Name:\tx\n"), None);
        assert!(rss_bytes(std::process::id()).expect("own /proc entry") > 0);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let usage = sample(&[std::process::id()]).expect("own /proc entry");
        assert!(usage.context_switches > 0 || usage.cpu > Duration::ZERO);
    }
}
