//! [`FsDisk`]: the storage [`Disk`] over a real directory.
//!
//! Durability maps one to one onto the trait: `sync` is `fdatasync` (which also makes a
//! grown file length durable), `sync_dir` is `fsync` on the directory, and `rename` is
//! `rename(2)`, atomic on POSIX file systems. Files stay open between calls, so an
//! append costs one `pwrite` and its sync one `fdatasync`. Every handle kept open is
//! closed on the closer thread, and a file removed or renamed over is held open until then, so
//! that freeing a large file never happens on the caller's thread (see [`crate::closer`]).

use crate::closer::ClosedOffThread;
use chat_core::snapshot_source::ReadBytes;
use chat_core::storage::{Disk, DiskError};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug)]
pub struct FsDisk {
    dir: PathBuf,
    /// Kept open to fsync the directory without reopening it.
    dir_handle: File,
    /// Open handles by file name.
    open_files: BTreeMap<String, ClosedOffThread>,
    /// Set on the snapshot writer's disk only (see [`WritePacing`]).
    pacing: Option<Pacer>,
}

/// How fast a disk that writes large files in the background may write them. A snapshot
/// of 1M messages is 275 MB, and five nodes sharing one disk each wrote one every 10 to
/// 15 s at full speed; a write-ahead-log fsync issued meanwhile waited behind it: 18 ms
/// at the median of the slow ones, up to 116 ms (1M-message fill, five nodes). Pacing
/// spreads each snapshot over seconds, and syncing it every few MiB keeps what an fsync
/// may have to wait for small (RocksDB's `bytes_per_sync` and rate limiter do the same
/// for compactions).
#[derive(Clone, Copy, Debug)]
pub struct WritePacing {
    pub bytes_per_sec: u64,
    pub sync_every_bytes: u64,
}

#[derive(Debug)]
struct Pacer {
    pacing: WritePacing,
    /// The file being written, when it was created, and its bytes since then and since
    /// its last sync.
    file: String,
    started: std::time::Instant,
    written_bytes: u64,
    unsynced_bytes: u64,
}

impl FsDisk {
    /// Paces every file this disk creates and writes (see [`WritePacing`]): for the
    /// snapshot writer's own handle on the data dir.
    pub fn with_write_pacing(mut self, pacing: WritePacing) -> FsDisk {
        self.pacing = Some(Pacer {
            pacing,
            file: String::new(),
            started: std::time::Instant::now(),
            written_bytes: 0,
            unsynced_bytes: 0,
        });
        self
    }

    /// After `len` bytes were written to `file`: syncs every `sync_every_bytes`, and
    /// sleeps while the file is ahead of `bytes_per_sec`.
    fn pace(&mut self, file: &str, len: usize) -> Result<(), DiskError> {
        let Some(pacer) = self.pacing.as_mut() else {
            return Ok(());
        };
        if pacer.file != file {
            pacer.file = file.to_string();
            pacer.started = std::time::Instant::now();
            pacer.written_bytes = 0;
            pacer.unsynced_bytes = 0;
        }
        pacer.written_bytes += len as u64;
        pacer.unsynced_bytes += len as u64;
        if pacer.unsynced_bytes < pacer.pacing.sync_every_bytes {
            return Ok(());
        }
        pacer.unsynced_bytes = 0;
        let due = std::time::Duration::from_secs_f64(
            pacer.written_bytes as f64 / pacer.pacing.bytes_per_sec.max(1) as f64,
        );
        let ahead = due.saturating_sub(pacer.started.elapsed());
        if let Some(handle) = self.open_files.get(file) {
            handle.sync_data().map_err(|e| io_error("sync", file, e))?;
        }
        std::thread::sleep(ahead);
        Ok(())
    }

    /// Opens the data directory, creating it (durably) if it does not exist.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FsDisk, DiskError> {
        let dir = dir.into();
        let display = dir.display().to_string();
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| io_error("create dir", &display, e))?;
            // The new directory's own entry must survive a crash too.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)
                    .and_then(|parent| parent.sync_all())
                    .map_err(|e| io_error("sync parent dir", &display, e))?;
            }
        }
        let dir_handle = File::open(&dir).map_err(|e| io_error("open dir", &display, e))?;
        Ok(FsDisk {
            dir,
            dir_handle,
            open_files: BTreeMap::new(),
            pacing: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, file: &str) -> Result<PathBuf, DiskError> {
        let single_component =
            !file.is_empty() && file != "." && file != ".." && !file.contains(['/', '\\', '\0']);
        if !single_component {
            return Err(DiskError::InvalidName {
                file: file.to_string(),
            });
        }
        Ok(self.dir.join(file))
    }

    /// The open handle for `file`, opening an existing file on first use.
    fn handle(&mut self, op: &'static str, file: &str) -> Result<&File, DiskError> {
        if !self.open_files.contains_key(file) {
            let path = self.path(file)?;
            let handle = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| io_error(op, file, e))?;
            self.open_files
                .insert(file.to_string(), ClosedOffThread::new(handle));
        }
        self.open_files
            .get(file)
            .map(|handle| &**handle)
            .ok_or_else(|| io_error(op, file, io::ErrorKind::NotFound.into()))
    }

    /// A handle on `file` that keeps its blocks until the closer thread lets them go,
    /// taken before the file loses its name; None if it has none to lose (or cannot be
    /// opened: then it is freed where it is unlinked, as without this).
    fn hold_until_closed(&mut self, file: &str) -> Option<ClosedOffThread> {
        self.open_files.remove(file).or_else(|| {
            File::open(self.path(file).ok()?)
                .ok()
                .map(ClosedOffThread::new)
        })
    }
}

fn io_error(op: &'static str, file: &str, error: io::Error) -> DiskError {
    match error.kind() {
        io::ErrorKind::NotFound => DiskError::NotFound {
            file: file.to_string(),
        },
        _ => DiskError::Io {
            op,
            file: file.to_string(),
            message: error.to_string(),
        },
    }
}

impl Disk for FsDisk {
    fn list(&self) -> Result<Vec<String>, DiskError> {
        let display = self.dir.display().to_string();
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_error("list", &display, e))? {
            let entry = entry.map_err(|e| io_error("list", &display, e))?;
            let is_file = entry
                .file_type()
                .map_err(|e| io_error("list", &display, e))?
                .is_file();
            // Names storage never writes (not UTF-8, subdirectories) are not its files.
            if let (true, Ok(name)) = (is_file, entry.file_name().into_string()) {
                files.push(name);
            }
        }
        files.sort();
        Ok(files)
    }

    fn len(&self, file: &str) -> Result<u64, DiskError> {
        let metadata = match self.open_files.get(file) {
            Some(handle) => handle.metadata(),
            None => fs::metadata(self.path(file)?),
        };
        Ok(metadata.map_err(|e| io_error("stat", file, e))?.len())
    }

    fn read_at(&self, file: &str, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let opened;
        let handle = match self.open_files.get(file) {
            Some(handle) => handle,
            None => {
                opened = File::open(self.path(file)?).map_err(|e| io_error("read", file, e))?;
                &opened
            }
        };
        match handle.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                Err(DiskError::OutOfBounds {
                    file: file.to_string(),
                    offset,
                    len: buf.len() as u64,
                    file_len: self.len(file)?,
                })
            }
            Err(error) => Err(io_error("read", file, error)),
        }
    }

    fn read_all(&self, file: &str) -> Result<Vec<u8>, DiskError> {
        fs::read(self.path(file)?).map_err(|e| io_error("read", file, e))
    }

    fn create(&mut self, file: &str) -> Result<(), DiskError> {
        let path = self.path(file)?;
        let handle = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io_error("create", file, e))?;
        self.open_files
            .insert(file.to_string(), ClosedOffThread::new(handle));
        if let Some(pacer) = self.pacing.as_mut() {
            // A new file starts its own pace.
            pacer.file.clear();
        }
        Ok(())
    }

    fn write_at(&mut self, file: &str, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.handle("write", file)?
            .write_all_at(data, offset)
            .map_err(|e| io_error("write", file, e))?;
        self.pace(file, data.len())
    }

    fn truncate(&mut self, file: &str, len: u64) -> Result<(), DiskError> {
        self.handle("truncate", file)?
            .set_len(len)
            .map_err(|e| io_error("truncate", file, e))
    }

    fn sync(&mut self, file: &str) -> Result<(), DiskError> {
        self.handle("sync", file)?
            .sync_data()
            .map_err(|e| io_error("sync", file, e))
    }

    fn open_reader(&self, file: &str) -> Result<Arc<dyn ReadBytes>, DiskError> {
        let handle = File::open(self.path(file)?).map_err(|e| io_error("open", file, e))?;
        Ok(Arc::new(FileReader {
            name: file.to_string(),
            handle: ClosedOffThread::new(handle),
        }))
    }

    fn rename(&mut self, source: &str, target: &str) -> Result<(), DiskError> {
        let (source_path, target_path) = (self.path(source)?, self.path(target)?);
        // The file renamed over (an older snapshot) is freed by the closer thread.
        let target_was_open = self.open_files.contains_key(target);
        let replaced = self.hold_until_closed(target);
        let renamed = fs::rename(source_path, target_path);
        match renamed {
            Ok(()) => {
                drop(replaced);
                if let Some(handle) = self.open_files.remove(source) {
                    self.open_files.insert(target.to_string(), handle);
                }
                Ok(())
            }
            Err(error) => {
                // Still the target's: a handle it had stays open for the next write.
                if let Some(handle) = replaced.filter(|_| target_was_open) {
                    self.open_files.insert(target.to_string(), handle);
                }
                Err(io_error("rename", source, error))
            }
        }
    }

    fn remove(&mut self, file: &str) -> Result<(), DiskError> {
        let path = self.path(file)?;
        // Freed by the closer thread, whoever held it open.
        let was_open = self.open_files.contains_key(file);
        let removed = self.hold_until_closed(file);
        match fs::remove_file(path) {
            Ok(()) => {
                drop(removed);
                Ok(())
            }
            Err(error) => {
                if let Some(handle) = removed.filter(|_| was_open) {
                    self.open_files.insert(file.to_string(), handle);
                }
                Err(io_error("remove", file, error))
            }
        }
    }

    fn sync_dir(&mut self) -> Result<(), DiskError> {
        let display = self.dir.display().to_string();
        self.dir_handle
            .sync_all()
            .map_err(|e| io_error("sync dir", &display, e))
    }
}

/// A file opened read-only, read with `pread` from any thread: the snapshot a leader
/// streams to followers, chunk by chunk, without holding it in memory. The descriptor
/// keeps the file's bytes readable after a newer snapshot is renamed over its name.
#[derive(Debug)]
struct FileReader {
    name: String,
    /// Often the last handle on a snapshot that a newer one replaced: its close frees
    /// the file, off this thread.
    handle: ClosedOffThread,
}

impl ReadBytes for FileReader {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.handle
            .read_exact_at(buf, offset)
            .map_err(|error| format!("read {} at {offset}: {error}", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_failed_rename_keeps_the_source_writable_and_opens_nothing_for_writing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut disk = FsDisk::open(dir.path()).expect("open");
        disk.create("log").expect("create");
        disk.write_at("log", 0, b"abc").expect("write");
        // A non-empty directory cannot be renamed over: the rename fails after the
        // target was opened to be held.
        std::fs::create_dir(dir.path().join("busy")).expect("mkdir");
        std::fs::write(dir.path().join("busy").join("f"), b"x").expect("fill");
        assert!(disk.rename("log", "busy").is_err());
        assert!(
            !disk.open_files.contains_key("busy"),
            "the held target is let go"
        );
        disk.write_at("log", 3, b"def")
            .expect("the source is still open for writing");
        disk.sync("log").expect("sync");
        assert_eq!(disk.read_all("log").expect("read"), b"abcdef");
        // The same for a remove that fails (a directory is not a file).
        assert!(disk.remove("busy").is_err());
        assert!(!disk.open_files.contains_key("busy"));
        // A rename over an open file carries the source's handle to the new name.
        disk.create("next").expect("create");
        disk.rename("next", "log").expect("rename over");
        disk.write_at("log", 0, b"z")
            .expect("write through the carried handle");
        disk.sync("log").expect("sync");
        assert_eq!(disk.read_all("log").expect("read"), b"z");
    }

    #[test]
    fn a_paced_disk_writes_no_faster_than_its_pace_and_reads_back_the_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pacing = WritePacing {
            bytes_per_sec: 1 << 20,
            sync_every_bytes: 64 << 10,
        };
        let mut disk = FsDisk::open(dir.path())
            .expect("open")
            .with_write_pacing(pacing);
        disk.create("staged").expect("create");
        let chunk = vec![7u8; 32 << 10];
        let started = Instant::now();
        for i in 0..8u64 {
            disk.write_at("staged", i * chunk.len() as u64, &chunk)
                .expect("write");
        }
        // 256 KiB at 1 MiB/s: the last pause ends a quarter of a second in.
        assert!(
            started.elapsed() >= Duration::from_millis(240),
            "paced writes took only {:?}",
            started.elapsed()
        );
        disk.sync("staged").expect("sync");
        let bytes = disk.read_all("staged").expect("read");
        assert_eq!(bytes.len(), 8 * chunk.len());
        assert!(bytes.iter().all(|&b| b == 7));
        // An unpaced disk on the same dir does not wait.
        let mut plain = FsDisk::open(dir.path()).expect("open");
        plain.create("other").expect("create");
        let started = Instant::now();
        plain.write_at("other", 0, &chunk).expect("write");
        assert!(started.elapsed() < Duration::from_millis(240));
    }
}
