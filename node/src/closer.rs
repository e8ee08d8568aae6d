//! Files closed on a thread of their own.
//!
//! Closing the last descriptor of a file that no name links to any more frees its
//! blocks and drops its cached pages, in the `close(2)` itself. For a snapshot of 1M
//! messages (275 MB) that took 50 ms on the test machine (35 ms even with its pages
//! dropped first), and the core thread is where it happened: a new snapshot renamed over
//! the old one while the replica still read it, and the replica let go of the old
//! reader when told of the new one; log segments the snapshot covers, removed in the
//! same step, cost the same per byte. Every node's answers stopped for that long, once
//! per snapshot. So every file handle `FsDisk` keeps open is a [`ClosedOffThread`], and a
//! file that is removed or renamed over is first opened so that its last close is one
//! of those: the unlink is then only a name, and the freeing happens here.
//!
//! Durability does not change: every write is synced before it counts, and `close`
//! syncs nothing. The thread takes at most [`CLOSES_QUEUED_MAX`] files; past that (or if
//! it could not start) a file is closed where it is dropped, as before.

use std::fs::File;
use std::ops::Deref;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;

/// Files waiting to be closed before a drop closes its file in place.
pub const CLOSES_QUEUED_MAX: usize = 256;

/// A file whose descriptor is closed on the closer thread when it is dropped.
#[derive(Debug)]
pub struct ClosedOffThread(Option<File>);

impl ClosedOffThread {
    pub fn new(file: File) -> ClosedOffThread {
        ClosedOffThread(Some(file))
    }
}

impl Deref for ClosedOffThread {
    type Target = File;

    fn deref(&self) -> &File {
        // Some from `new` until `drop` takes it.
        self.0.as_ref().expect("a file until dropped")
    }
}

impl Drop for ClosedOffThread {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            close_off_thread(file);
        }
    }
}

/// Hands `file` to the closer thread (started on first use, one per process); closes
/// it here if the thread is busy or absent.
pub fn close_off_thread(file: File) {
    static CLOSER: OnceLock<Option<SyncSender<File>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (files, receiver) = sync_channel::<File>(CLOSES_QUEUED_MAX);
        let started = std::thread::Builder::new()
            .name("file-closer".to_string())
            .spawn(move || {
                // Each file is closed as it is dropped.
                for file in receiver {
                    drop(file);
                }
            });
        match started {
            Ok(_) => Some(files),
            Err(error) => {
                tracing::warn!(
                    "cannot start the file closer thread ({error}); files close in place"
                );
                None
            }
        }
    });
    let Some(closer) = closer else {
        return;
    };
    // Full or gone: the file comes back in the error and closes here, as it drops.
    let _ = closer.try_send(file);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// Where descriptor `fd` of this process points, if it is open.
    #[cfg(target_os = "linux")]
    fn fd_target(fd: i32) -> Option<std::path::PathBuf> {
        std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_dropped_file_outlives_its_name_and_is_then_closed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("snapshot-old");
        File::create(&path)
            .and_then(|mut f| f.write_all(b"bytes"))
            .expect("write");
        let file = ClosedOffThread::new(File::open(&path).expect("open"));
        let fd = file.as_raw_fd();
        std::fs::remove_file(&path).expect("unlink while open");
        let mut read = String::new();
        (&*file)
            .read_to_string(&mut read)
            .expect("read after unlink");
        assert_eq!(read, "bytes");
        let ours = |target: &std::path::Path| target.starts_with(dir.path());
        assert!(
            fd_target(fd).is_some_and(|t| ours(&t)),
            "open until dropped"
        );
        drop(file);
        // The drop started the closer thread (it is named so in /proc). A new thread
        // names itself once it runs, so its name may take a moment to show.
        let closer_threads = || {
            std::fs::read_dir("/proc/self/task")
                .expect("list threads")
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim() == "file-closer")
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while closer_threads() == 0 {
            assert!(Instant::now() < deadline, "no file-closer thread started");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(closer_threads(), 1, "one closer thread per process");
        // Closed by the closer thread, soon; the number may be reused meanwhile, but
        // not for a file of this test's directory.
        while fd_target(fd).is_some_and(|t| ours(&t)) {
            assert!(Instant::now() < deadline, "descriptor {fd} never closed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn more_drops_than_the_queue_holds_all_close() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        File::create(&path).expect("create");
        // Past the queue, files close where they are dropped: none is lost or leaked
        // (a leak would exhaust descriptors in a long run; here it would fail the
        // opens below under a low limit, so count them instead).
        for _ in 0..(CLOSES_QUEUED_MAX * 4) {
            drop(ClosedOffThread::new(File::open(&path).expect("open")));
        }
        #[cfg(target_os = "linux")]
        {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let open_here = std::fs::read_dir("/proc/self/fd")
                    .expect("list descriptors")
                    .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|t| t.starts_with(dir.path()))
                    .count();
                if open_here == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{open_here} descriptors still open"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}
