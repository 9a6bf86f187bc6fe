//! Paths of the node layout (DESIGN.md "Node layout"), the node's agent lock, and the atomic
//! file operations on the layout. Not policy: which release may become current is decided in
//! `ops`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::idle::RECEIVE_DEADLINE;
use crate::{AgentError, io};

/// How long an operation waits for another one on the same node before giving up. Shorter
/// than any controller's command timeout, so a request its controller gave up on never runs
/// late.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The node layout under a node root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    lock_wait: Duration,
    receive_deadline: Duration,
}

/// Holds `state/agent.lock` for as long as it lives. The file names its holder while held
/// (`<pid> <unix seconds since it took the lock>`), so that a refused operation can say who
/// holds the node and since when; it is emptied when released.
pub(crate) struct Lock(fs::File);

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.0.set_len(0);
    }
}

/// The operation holding the node's lock, as its lock file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// How long it has held the lock (by the wall clock, whole seconds).
    pub held_for: Duration,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {}, holding it for {} s",
            self.pid,
            self.held_for.as_secs()
        )
    }
}

impl Holder {
    fn record(file: &fs::File) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        file.set_len(0)?;
        file.write_all_at(format!("{} {since}\n", std::process::id()).as_bytes(), 0)
    }

    /// What the lock file says, if it names a holder (a holder that has only just taken the
    /// lock may not have written it yet).
    fn read(file: &fs::File) -> Option<Holder> {
        use std::io::Read;
        let mut text = String::new();
        file.take(64).read_to_string(&mut text).ok()?;
        let (pid, since) = text.trim().split_once(' ')?;
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(since.parse().ok()?);
        Some(Holder {
            pid: pid.parse().ok()?,
            held_for: SystemTime::now().duration_since(since).unwrap_or_default(),
        })
    }
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            lock_wait: LOCK_WAIT,
            receive_deadline: RECEIVE_DEADLINE,
        }
    }

    /// The same layout, waiting `wait` instead of [`LOCK_WAIT`] for the node's lock (tests
    /// of a busy node do not wait a minute).
    pub fn with_lock_wait(self, wait: Duration) -> Self {
        Self {
            lock_wait: wait,
            ..self
        }
    }

    /// The same layout, giving a bundle upload `limit` instead of [`RECEIVE_DEADLINE`] to
    /// arrive (tests of a trickling sender do not wait minutes).
    pub fn with_receive_deadline(self, limit: Duration) -> Self {
        Self {
            receive_deadline: limit,
            ..self
        }
    }

    /// How long `stage` may take to receive a bundle.
    pub fn receive_deadline(&self) -> Duration {
        self.receive_deadline
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }
    pub fn release(&self, version: &str) -> PathBuf {
        self.releases().join(version)
    }
    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }
    pub fn previous(&self) -> PathBuf {
        self.root.join("previous")
    }
    pub fn trust_root(&self) -> PathBuf {
        self.root.join("trust").join("root.json")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    /// Verified manifests of staged releases, `state/manifests/<version>.json`.
    pub fn manifest(&self, version: &str) -> PathBuf {
        self.state()
            .join("manifests")
            .join(format!("{version}.json"))
    }
    /// The sha256 (lowercase hex) of the exact signed manifest bytes of a staged release,
    /// `state/manifests/<version>.sha256`: the digest rollout orders name a release by. Written
    /// before the manifest, so a staged release (its manifest there) always has it.
    pub fn manifest_digest(&self, version: &str) -> PathBuf {
        self.state()
            .join("manifests")
            .join(format!("{version}.sha256"))
    }
    /// The highest rollout order or control sequence this node accepted,
    /// `state/order-sequence`: only ever raised.
    pub fn order_sequence(&self) -> PathBuf {
        self.state().join("order-sequence")
    }
    /// The rollout orders this node accepted, one record per rollout, `state/orders/`.
    pub fn orders(&self) -> PathBuf {
        self.state().join("orders")
    }
    /// The record of rollout `rollout` on this node (`state/orders/<rollout>.json`): the
    /// release active when the rollout began and the last order of it accepted.
    pub fn order_record(&self, rollout: &str) -> PathBuf {
        self.orders().join(format!("{rollout}.json"))
    }
    /// The last control of `rollout` this node accepted, `state/orders/<rollout>.control`.
    pub fn control_record(&self, rollout: &str) -> PathBuf {
        self.orders().join(format!("{rollout}.control"))
    }
    /// This node's progress in `rollout` (written by the daemon alone),
    /// `state/orders/<rollout>.progress`.
    pub fn rollout_progress(&self, rollout: &str) -> PathBuf {
        self.orders().join(format!("{rollout}.progress"))
    }
    /// The highest release counter this node has activated, `state/counter`.
    pub fn counter(&self) -> PathBuf {
        self.state().join("counter")
    }
    /// The newest `created` time of any release this node accepted, `state/created` (unix
    /// seconds): a manifest that expired before it is refused, whatever the node's clock says.
    pub fn created_floor(&self) -> PathBuf {
        self.state().join("created")
    }
    /// An activation's switch in flight, `state/switch`: the release `current` leaves and the
    /// one it goes to, so a crash between the two link writes is finished by the next operation.
    pub fn switch_journal(&self) -> PathBuf {
        self.state().join("switch")
    }
    /// Held by every operation that changes the node, `state/agent.lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.state().join("agent.lock")
    }
    /// Where bundles are received and unpacked before they become `releases/<version>`.
    pub fn staging(&self) -> PathBuf {
        self.state().join("staging")
    }

    /// Creates the directories the agent writes to (idempotent).
    pub fn ensure(&self) -> Result<(), AgentError> {
        for dir in [
            self.releases(),
            self.staging(),
            self.state().join("manifests"),
            self.orders(),
            self.root.join("trust"),
        ] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        // The agent's own state, staging included, is for the agent's account alone.
        for dir in [self.state(), self.staging()] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        }
        Ok(())
    }

    /// Takes the node's agent lock, waiting for another operation at most the lock wait.
    pub(crate) fn lock(&self) -> Result<Lock, AgentError> {
        self.ensure()?;
        let path = self.lock_file();
        let file = open_lock_file(&path)?;
        let deadline = Instant::now() + self.lock_wait;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    Holder::record(&file).map_err(io(&path))?;
                    return Ok(Lock(file));
                }
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(AgentError::Busy {
                        waited: self.lock_wait.as_secs(),
                        holder: Holder::read(&file),
                    });
                }
                Err(fs::TryLockError::Error(e)) => return Err(AgentError::Io { path, error: e }),
            }
        }
    }

    /// The version a link (`current`, `previous`) points at, if it exists.
    pub fn link_version(&self, link: &Path) -> Result<Option<String>, AgentError> {
        match fs::read_link(link) {
            Ok(target) => {
                let name = target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned);
                match (target.parent() == Some(Path::new("releases")), name) {
                    (true, Some(name)) => Ok(Some(name)),
                    _ => Err(AgentError::Layout(format!(
                        "{} points at {}, not releases/<version>",
                        link.display(),
                        target.display()
                    ))),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::Io {
                path: link.to_owned(),
                error: e,
            }),
        }
    }

    /// Points `link` at `releases/<version>` atomically: a new symlink under a temporary name,
    /// renamed over the old one, then the directory synced.
    pub fn point(&self, link: &Path, version: &str) -> Result<(), AgentError> {
        let tmp = link.with_extension("new");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(version), &tmp).map_err(io(&tmp))?;
        fs::rename(&tmp, link).map_err(io(link))?;
        sync_dir(&self.root)
    }

    /// Exchanges two links (`current` and `previous`) in one step, then syncs the directory;
    /// when `b` does not exist, `a` is renamed to it.
    pub fn swap(&self, a: &Path, b: &Path) -> Result<(), AgentError> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT) if b.symlink_metadata().is_err() => {
                fs::rename(a, b).map_err(io(b))?;
            }
            Err(e) => {
                return Err(AgentError::Io {
                    path: b.to_owned(),
                    error: e.into(),
                });
            }
        }
        sync_dir(&self.root)
    }

    /// Writes a file atomically (temporary name, fsync, rename, directory fsync).
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
        self.write_atomic_mode(path, bytes, None)
    }

    /// [`Layout::write_atomic`], the file given `mode` before it takes its name (an executable
    /// is never found half-made or not yet executable).
    pub fn write_atomic_mode(
        &self,
        path: &Path,
        bytes: &[u8],
        mode: Option<u32>,
    ) -> Result<(), AgentError> {
        let dir = path.parent().unwrap_or(&self.root);
        // A temporary name of this write's own: two writers (the daemon and a one-shot
        // request, or two tasks) never share one, whatever the files' extensions.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = path.with_file_name(name);
        let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes)
            .and_then(|()| match mode {
                Some(mode) => file.set_permissions(fs::Permissions::from_mode(mode)),
                None => Ok(()),
            })
            .and_then(|()| file.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        sync_dir(dir)
    }
}

/// Opens (creating) a lock file for reading and writing, not truncated: while another
/// process holds it, it names that holder.
pub(crate) fn open_lock_file(path: &Path) -> Result<fs::File, AgentError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(path))
}

pub fn sync_dir(dir: &Path) -> Result<(), AgentError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}
