//! Address blocks: each fleet owns one loopback /24 (127.A.B.0/24, node K on 127.A.B.K), held by
//! an exclusive lock on `temp_dir()/fleet-testfleet-locks/127.A.B.lock`; not the sshd processes
//! (see `node`).
//!
//! The lock is a `flock` on an open file description, so two fleets in one process conflict just
//! like two processes do. Every sshd of the fleet gets a duplicate of the lock file as its stdin
//! (sshd in `-D` mode never reads it), so the block stays taken while any of the fleet's sshd
//! lives: after `keep`, and after the test process was killed without running `Drop`. A process
//! forked at the moment a fleet stops (a concurrent spawn, an sshd child accepting a last
//! connection before it execs) holds a duplicate for a few milliseconds, so a block is free again
//! soon after its sshd exit, not necessarily at once.

use std::fs::{self, File, TryLockError};
use std::io::{self, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::HarnessError;

/// The first octet after 127 that fleets use (127.0.0.1 and its neighbours are left alone).
const FIRST_A: u8 = 100;
const LAST_A: u8 = 250;
const BLOCKS: u64 = (LAST_A - FIRST_A + 1) as u64 * 256;
/// Most nodes one block can hold (C = 1..=MAX_NODES).
pub const MAX_NODES: usize = 250;

/// A locked 127.A.B.0/24 block; the lock lasts as long as this value (and any duplicate of `file`).
#[derive(Debug)]
pub(crate) struct Block {
    pub a: u8,
    pub b: u8,
    pub file: File,
    pub path: PathBuf,
}

impl Block {
    /// The address of node `k` (0-based): 127.A.B.(k+1).
    pub fn addr(&self, k: usize) -> Ipv4Addr {
        let c = u8::try_from(k + 1).expect("node counts are checked against MAX_NODES");
        Ipv4Addr::new(127, self.a, self.b, c)
    }
}

/// The folder holding the lock files.
pub fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("fleet-testfleet-locks")
}

/// Locks a free block whose first `nodes` addresses can all bind `port`, probing from a
/// pseudo-random start so concurrent fleets rarely contend for the same lock.
pub(crate) fn allocate(nodes: usize, port: u16, owner: &Path) -> Result<Block, HarnessError> {
    let dir = lock_dir();
    fs::create_dir_all(&dir).map_err(HarnessError::io(format!("create {}", dir.display())))?;
    let start = seed() % BLOCKS;
    for tried in 0..BLOCKS {
        let index = (start + tried) % BLOCKS;
        let a = FIRST_A + u8::try_from(index / 256).expect("index < BLOCKS");
        let b = u8::try_from(index % 256).expect("remainder of 256");
        let path = dir.join(format!("127.{a}.{b}.lock"));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(HarnessError::io(format!("open {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => {
                return Err(HarnessError::io(format!("lock {}", path.display()))(e));
            }
        }
        let block = Block { a, b, file, path };
        if !bindable(&block, nodes, port)? {
            // Something outside our locks (a leftover sshd, another program) uses the block.
            continue;
        }
        record_owner(&block, owner)?;
        return Ok(block);
    }
    Err(HarnessError::NoFreeBlock {
        nodes,
        port,
        tried: usize::try_from(BLOCKS).expect("small"),
        lock_dir: dir,
    })
}

/// `true` when every node address of the block can bind `port` right now.
fn bindable(block: &Block, nodes: usize, port: u16) -> Result<bool, HarnessError> {
    for k in 0..nodes {
        let addr = SocketAddrV4::new(block.addr(k), port);
        match TcpListener::bind(addr) {
            Ok(listener) => drop(listener),
            Err(e) if e.kind() == ErrorKind::AddrInUse => return Ok(false),
            Err(e) => return Err(HarnessError::io(format!("bind {addr} (probing)"))(e)),
        }
    }
    Ok(true)
}

/// Writes who holds the block into its lock file, for whoever wonders why it is taken.
fn record_owner(block: &Block, owner: &Path) -> Result<(), HarnessError> {
    let write = || -> io::Result<()> {
        let mut file = &block.file;
        file.set_len(0)?;
        writeln!(file, "pid {}\ndir {}", std::process::id(), owner.display())
    };
    write().map_err(HarnessError::io(format!("write {}", block.path.display())))
}

/// Process id, clock and a per-process counter mixed into a start point for probing.
fn seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64 finaliser: spreads nearby inputs over the whole range.
    let mut x =
        nanos ^ (u64::from(std::process::id()) << 32) ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_allocations_in_one_process_get_different_blocks() {
        let owner = Path::new("/nowhere");
        let first = allocate(3, 2222, owner).expect("first block");
        let second = allocate(3, 2222, owner).expect("second block");
        assert_ne!((first.a, first.b), (second.a, second.b));
        assert!((FIRST_A..=LAST_A).contains(&first.a));
        assert_eq!(first.addr(0), Ipv4Addr::new(127, first.a, first.b, 1));
        assert_eq!(first.addr(249).octets()[3], 250);
    }

    #[test]
    fn a_locked_block_is_skipped() {
        let owner = Path::new("/nowhere");
        let held = allocate(1, 2222, owner).expect("block");
        let again = File::options()
            .read(true)
            .write(true)
            .open(&held.path)
            .expect("open the same lock file");
        assert!(matches!(again.try_lock(), Err(TryLockError::WouldBlock)));
        let text = fs::read_to_string(&held.path).expect("lock file text");
        assert!(text.contains("dir /nowhere"), "{text}");
    }
}
