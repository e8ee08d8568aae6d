//! A disk in memory that remembers what is durable and what is not, so that a seeded
//! crash can lose, keep or tear exactly the writes a real machine could.
//!
//! The model: files are inodes with durable bytes plus the data operations issued since
//! their last `sync`; the directory is a durable name table plus the operations issued
//! since the last `sync_dir`. A crash replays each pending operation on the durable state
//! or drops it, each decided by the caller's RNG, independently, so the states it
//! produces are a superset of what an ordered journal would produce.

use crate::storage::disk::Disk;
use crate::storage::error::DiskError;
use rand::RngCore;
use std::collections::BTreeMap;

type InodeId = u64;

#[derive(Clone, Debug)]
enum DataOp {
    Write { offset: u64, data: Vec<u8> },
    Truncate { len: u64 },
}

#[derive(Clone, Debug, Default)]
struct Inode {
    /// What the medium holds.
    durable: Vec<u8>,
    /// What reads see: `durable` with `pending` applied.
    current: Vec<u8>,
    pending: Vec<DataOp>,
}

/// A directory operation. Rename and remove name the inode they acted on, so replaying
/// them after a crash never moves a different file that happens to carry the same name.
#[derive(Clone, Debug)]
enum DirOp {
    Create {
        name: String,
        inode: InodeId,
    },
    Rename {
        source: String,
        target: String,
        inode: InodeId,
    },
    Remove {
        name: String,
        inode: InodeId,
    },
}

/// What a crash does to one pending write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFate {
    Lost,
    Kept,
    /// Only the first `kept_bytes` reach the medium.
    Torn {
        kept_bytes: usize,
    },
}

/// Counters for tests that assert how much work a call did (group commit: one sync).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Mutating operations issued (everything except reads and `list`).
    pub ops: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub bytes_written: u64,
}

/// How a crash treated the pending operations, for test diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    pub writes_lost: u64,
    pub writes_kept: u64,
    pub writes_torn: u64,
    pub dir_ops_lost: u64,
    pub dir_ops_kept: u64,
}

/// A kind of disk operation a fault can be aimed at (the simulator crashes a node at the
/// instant its disk performs one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskOpKind {
    /// Creating a log segment (`*.seg`).
    SegmentCreate,
    /// Truncating any file.
    Truncate,
    /// Writing the snapshot (its temporary file).
    SnapshotWrite,
    /// Renaming a file into place (the snapshot, the hard state).
    Rename,
    /// Syncing the directory.
    SyncDir,
    /// Removing a file.
    Remove,
}

impl DiskOpKind {
    pub const ALL: [DiskOpKind; 6] = [
        DiskOpKind::SegmentCreate,
        DiskOpKind::Truncate,
        DiskOpKind::SnapshotWrite,
        DiskOpKind::Rename,
        DiskOpKind::SyncDir,
        DiskOpKind::Remove,
    ];

    fn matches(self, op: &str, file: &str) -> bool {
        match self {
            DiskOpKind::SegmentCreate => op == "create" && file.ends_with(".seg"),
            DiskOpKind::Truncate => op == "truncate",
            DiskOpKind::SnapshotWrite => op == "write" && file.starts_with("snapshot"),
            DiskOpKind::Rename => op == "rename",
            DiskOpKind::SyncDir => op == "sync_dir",
            DiskOpKind::Remove => op == "remove",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    /// The directory as the running process sees it.
    names: BTreeMap<String, InodeId>,
    /// The directory as the medium holds it.
    names_durable: BTreeMap<String, InodeId>,
    dir_pending: Vec<DirOp>,
    inodes: BTreeMap<InodeId, Inode>,
    inode_next: InodeId,
    /// Mutating operations allowed before every further one fails (an injected I/O
    /// error; together with `crash` it models power loss after the k-th operation).
    ops_allowed: Option<u64>,
    /// Fail (and keep failing, as `ops_allowed` does) at the operation of this kind
    /// after skipping this many of them.
    fail_at_kind: Option<(DiskOpKind, u64)>,
    stats: DiskStats,
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    pub fn stats(&self) -> DiskStats {
        self.stats
    }

    /// After `ops` more successful mutating operations, every mutating operation fails
    /// with an I/O error until `crash` or `set_fail_after_ops(None)`.
    pub fn set_fail_after_ops(&mut self, ops: Option<u64>) {
        self.ops_allowed = ops;
    }

    /// The `skip`-th (from 0) operation of kind `kind` from now fails, and every mutating
    /// operation after it, until `crash` or `set_fail_at_kind(None)`.
    pub fn set_fail_at_kind(&mut self, fault: Option<(DiskOpKind, u64)>) {
        self.fail_at_kind = fault;
    }

    /// Loses power: every unsynced write is lost, kept, or torn at a random byte
    /// boundary, and every unsynced directory operation is lost or kept, each decided by
    /// `rng`. Afterwards reads see exactly what is durable, and injected faults are off.
    pub fn crash(&mut self, rng: &mut impl RngCore) -> CrashReport {
        // One RNG serves both closures in turn; a cell lets both borrow it.
        let rng = std::cell::RefCell::new(rng);
        self.crash_with(
            |len_bytes| {
                let choice = rng.borrow_mut().next_u32() % 3;
                match choice {
                    0 => WriteFate::Lost,
                    1 => WriteFate::Kept,
                    _ => {
                        let kept_bytes = rng.borrow_mut().next_u64() % (len_bytes as u64).max(1);
                        WriteFate::Torn {
                            kept_bytes: kept_bytes as usize,
                        }
                    }
                }
            },
            || rng.borrow_mut().next_u32() % 2 == 1,
        )
    }

    /// Loses power with every outcome chosen by the caller: `write_fate` is asked about
    /// each pending write (given its length), file by file in creation order, then
    /// `dir_op_kept` about each pending directory operation in issue order. A pending
    /// truncation is kept unless its fate is `Lost`. Tests use this to enumerate every
    /// tear exhaustively.
    pub fn crash_with(
        &mut self,
        mut write_fate: impl FnMut(usize) -> WriteFate,
        mut dir_op_kept: impl FnMut() -> bool,
    ) -> CrashReport {
        let mut report = CrashReport::default();
        // BTreeMap iteration keeps the order of the questions, and so the outcome, a
        // function of the answers alone.
        for inode in self.inodes.values_mut() {
            let mut content = std::mem::take(&mut inode.durable);
            for op in inode.pending.drain(..) {
                let len_bytes = match &op {
                    DataOp::Write { data, .. } => data.len(),
                    DataOp::Truncate { .. } => 0,
                };
                match (op, write_fate(len_bytes)) {
                    (_, WriteFate::Lost) => report.writes_lost += 1,
                    (DataOp::Write { offset, mut data }, WriteFate::Torn { kept_bytes })
                        if kept_bytes < data.len() =>
                    {
                        data.truncate(kept_bytes);
                        apply_data_op(&mut content, &DataOp::Write { offset, data });
                        report.writes_torn += 1;
                    }
                    // A truncation is a metadata change: it happens or it does not.
                    (op, _) => {
                        apply_data_op(&mut content, &op);
                        report.writes_kept += 1;
                    }
                }
            }
            inode.current = content.clone();
            inode.durable = content;
        }
        let mut names = std::mem::take(&mut self.names_durable);
        for op in self.dir_pending.drain(..) {
            if !dir_op_kept() {
                report.dir_ops_lost += 1;
                continue;
            }
            report.dir_ops_kept += 1;
            apply_dir_op(&mut names, op);
        }
        self.names = names.clone();
        self.names_durable = names;
        self.ops_allowed = None;
        self.fail_at_kind = None;
        self.collect_garbage();
        report
    }

    /// Flips bits (`mask`, non-zero) of the byte at `offset`, both in what reads see and
    /// on the medium: damage that a crash does not undo.
    pub fn corrupt(&mut self, file: &str, offset: u64, mask: u8) -> Result<(), DiskError> {
        let inode = self.inode_mut(file)?;
        let len = inode.current.len() as u64;
        if offset >= len {
            return Err(DiskError::OutOfBounds {
                file: file.to_string(),
                offset,
                len: 1,
                file_len: len,
            });
        }
        inode.current[offset as usize] ^= mask;
        if let Some(byte) = inode.durable.get_mut(offset as usize) {
            *byte ^= mask;
        }
        Ok(())
    }

    /// Counts a mutating operation, or fails it if the injected fault is due.
    fn begin_op(&mut self, op: &'static str, file: &str) -> Result<(), DiskError> {
        if let Some((kind, skip)) = self.fail_at_kind {
            if kind.matches(op, file) {
                if skip == 0 {
                    self.fail_at_kind = None;
                    self.ops_allowed = Some(0);
                } else {
                    self.fail_at_kind = Some((kind, skip - 1));
                }
            }
        }
        if let Some(allowed) = self.ops_allowed {
            if allowed == 0 {
                return Err(DiskError::Io {
                    op,
                    file: file.to_string(),
                    message: "injected I/O error".to_string(),
                });
            }
            self.ops_allowed = Some(allowed - 1);
        }
        self.stats.ops += 1;
        Ok(())
    }

    fn inode(&self, file: &str) -> Result<&Inode, DiskError> {
        self.names
            .get(file)
            .and_then(|id| self.inodes.get(id))
            .ok_or_else(|| not_found(file))
    }

    fn inode_mut(&mut self, file: &str) -> Result<&mut Inode, DiskError> {
        let id = *self.names.get(file).ok_or_else(|| not_found(file))?;
        self.inodes.get_mut(&id).ok_or_else(|| not_found(file))
    }

    fn push_data_op(&mut self, file: &str, op: DataOp) -> Result<(), DiskError> {
        let inode = self.inode_mut(file)?;
        apply_data_op(&mut inode.current, &op);
        inode.pending.push(op);
        Ok(())
    }

    /// Drops inodes that no name, current or durable, can reach any more.
    fn collect_garbage(&mut self) {
        let names = &self.names;
        let names_durable = &self.names_durable;
        let pending = &self.dir_pending;
        self.inodes.retain(|id, _| {
            names.values().any(|i| i == id)
                || names_durable.values().any(|i| i == id)
                || pending
                    .iter()
                    .any(|op| matches!(op, DirOp::Create { inode, .. } if inode == id))
        });
    }
}

fn not_found(file: &str) -> DiskError {
    DiskError::NotFound {
        file: file.to_string(),
    }
}

fn validate_name(file: &str) -> Result<(), DiskError> {
    if file.is_empty() || file == "." || file == ".." || file.contains(['/', '\\', '\0']) {
        return Err(DiskError::InvalidName {
            file: file.to_string(),
        });
    }
    Ok(())
}

fn apply_data_op(content: &mut Vec<u8>, op: &DataOp) {
    match op {
        DataOp::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[start..end].copy_from_slice(data);
        }
        DataOp::Truncate { len } => content.resize(*len as usize, 0),
    }
}

fn apply_dir_op(names: &mut BTreeMap<String, InodeId>, op: DirOp) {
    match op {
        DirOp::Create { name, inode } => {
            names.insert(name, inode);
        }
        DirOp::Rename {
            source,
            target,
            inode,
        } => {
            if names.get(&source) == Some(&inode) {
                names.remove(&source);
                names.insert(target, inode);
            }
        }
        DirOp::Remove { name, inode } => {
            if names.get(&name) == Some(&inode) {
                names.remove(&name);
            }
        }
    }
}

impl Disk for MemDisk {
    fn list(&self) -> Result<Vec<String>, DiskError> {
        Ok(self.names.keys().cloned().collect())
    }

    fn len(&self, file: &str) -> Result<u64, DiskError> {
        Ok(self.inode(file)?.current.len() as u64)
    }

    fn read_at(&self, file: &str, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let content = &self.inode(file)?.current;
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= content.len() as u64 => {
                buf.copy_from_slice(&content[offset as usize..end as usize]);
                Ok(())
            }
            _ => Err(DiskError::OutOfBounds {
                file: file.to_string(),
                offset,
                len: buf.len() as u64,
                file_len: content.len() as u64,
            }),
        }
    }

    fn read_all(&self, file: &str) -> Result<Vec<u8>, DiskError> {
        Ok(self.inode(file)?.current.clone())
    }

    fn create(&mut self, file: &str) -> Result<(), DiskError> {
        validate_name(file)?;
        self.begin_op("create", file)?;
        if self.names.contains_key(file) {
            return self.push_data_op(file, DataOp::Truncate { len: 0 });
        }
        let inode = self.inode_next;
        self.inode_next += 1;
        self.inodes.insert(inode, Inode::default());
        self.names.insert(file.to_string(), inode);
        self.dir_pending.push(DirOp::Create {
            name: file.to_string(),
            inode,
        });
        Ok(())
    }

    fn write_at(&mut self, file: &str, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.begin_op("write", file)?;
        self.stats.bytes_written += data.len() as u64;
        let op = DataOp::Write {
            offset,
            data: data.to_vec(),
        };
        self.push_data_op(file, op)
    }

    fn truncate(&mut self, file: &str, len: u64) -> Result<(), DiskError> {
        self.begin_op("truncate", file)?;
        self.push_data_op(file, DataOp::Truncate { len })
    }

    fn sync(&mut self, file: &str) -> Result<(), DiskError> {
        self.begin_op("sync", file)?;
        self.stats.file_syncs += 1;
        let inode = self.inode_mut(file)?;
        inode.pending.clear();
        inode.durable = inode.current.clone();
        Ok(())
    }

    fn rename(&mut self, source: &str, target: &str) -> Result<(), DiskError> {
        validate_name(target)?;
        self.begin_op("rename", source)?;
        let inode = self.names.remove(source).ok_or_else(|| not_found(source))?;
        self.names.insert(target.to_string(), inode);
        self.dir_pending.push(DirOp::Rename {
            source: source.to_string(),
            target: target.to_string(),
            inode,
        });
        Ok(())
    }

    fn remove(&mut self, file: &str) -> Result<(), DiskError> {
        self.begin_op("remove", file)?;
        let inode = self.names.remove(file).ok_or_else(|| not_found(file))?;
        self.dir_pending.push(DirOp::Remove {
            name: file.to_string(),
            inode,
        });
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), DiskError> {
        self.begin_op("sync_dir", ".")?;
        self.stats.dir_syncs += 1;
        self.names_durable = self.names.clone();
        self.dir_pending.clear();
        self.collect_garbage();
        Ok(())
    }
}
