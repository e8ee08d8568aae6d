//! The data-directory stamp: which node of which cluster a directory belongs to.
//!
//! Starting node 3 on node 2's directory, or a node of one cluster on another's, would
//! make it vote and acknowledge with someone else's log: a silent safety violation. The
//! stamp, written on first start, turns that into a refusal with a one-line reason.

use std::fs;
use std::io::Write;
use std::path::Path;

pub const STAMP_FILE: &str = "node.stamp";

#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error(
        "data dir {dir} belongs to node {found_node} of cluster {found_cluster:?}, not node \
         {node} of cluster {cluster:?}: point --data-dir at this node's own directory"
    )]
    Mismatch {
        dir: String,
        found_node: u64,
        found_cluster: String,
        node: u64,
        cluster: String,
    },
    #[error("data dir {dir}: unreadable stamp file {STAMP_FILE}: {reason}")]
    Malformed { dir: String, reason: String },
    #[error("data dir {dir}: {reason}")]
    Io { dir: String, reason: String },
}

/// Checks the stamp of `dir` against `(node, cluster)`, writing it durably if the
/// directory has none yet (creating the directory if needed).
pub fn check_or_write(dir: &Path, node: u64, cluster: &str) -> Result<(), StampError> {
    let display = dir.display().to_string();
    let io = |e: std::io::Error| StampError::Io {
        dir: display.clone(),
        reason: e.to_string(),
    };
    fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(STAMP_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let (found_node, found_cluster) =
                parse(&text).ok_or_else(|| StampError::Malformed {
                    dir: display.clone(),
                    reason: "expected lines `node = N` and `cluster = NAME`".to_owned(),
                })?;
            if found_node != node || found_cluster != cluster {
                return Err(StampError::Mismatch {
                    dir: display,
                    found_node,
                    found_cluster,
                    node,
                    cluster: cluster.to_owned(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join(format!("{STAMP_FILE}.tmp"));
            let mut file = fs::File::create(&tmp).map_err(io)?;
            write!(file, "node = {node}\ncluster = {cluster}\n").map_err(io)?;
            file.sync_all().map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)?;
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            Ok(())
        }
        Err(e) => Err(io(e)),
    }
}

fn parse(text: &str) -> Option<(u64, String)> {
    let mut node = None;
    let mut cluster = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            "node" => node = value.trim().parse().ok(),
            "cluster" => cluster = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    Some((node?, cluster?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_writes_then_mismatch_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        check_or_write(dir.path(), 1, "c").expect("first start");
        check_or_write(dir.path(), 1, "c").expect("same node again");
        let other_node = check_or_write(dir.path(), 2, "c").expect_err("other node");
        assert!(other_node.to_string().contains("belongs to node 1"));
        assert!(check_or_write(dir.path(), 1, "d").is_err());
    }
}
