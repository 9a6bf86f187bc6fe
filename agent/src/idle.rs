//! Readers that bound how long a bundle upload can hold the node: one gives up when its input
//! is silent for too long, so that a controller that stalls mid-upload (a hung process, a
//! half-open connection) does not hold the node's lock until the TCP connection dies; the other
//! gives up when the whole upload takes too long, so that a sender trickling a byte now and
//! then cannot hold it either. Either way staging fails, cleans up and frees the lock.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// How long `serve` waits for the next bytes of a bundle: shorter than the controller's
/// default command timeout (600 s), longer than any pause of a live upload.
pub const STDIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `stage` may take to receive a whole bundle, however steadily it arrives. The lock
/// wait before it ([`crate::LOCK_WAIT`], 60 s), this, and one idle timeout for a read already
/// waiting when it passes stay under the controller's default command timeout (600 s), so a
/// controller never gives up on an agent that is still receiving. At 1 MB/s this is 420 MB.
pub const RECEIVE_DEADLINE: Duration = Duration::from_secs(420);

/// The agent's standard input, for a bundle: unbuffered (std's `Stdin` keeps a buffer the idle
/// check cannot see), given up on after [`STDIN_IDLE_TIMEOUT`] of silence.
pub fn stdin() -> io::Result<IdleTimeout<File>> {
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    Ok(IdleTimeout::new(File::from(fd), STDIN_IDLE_TIMEOUT))
}

/// Reads from `inner`, failing with `TimedOut` when no byte arrives for `limit`.
pub struct IdleTimeout<R> {
    inner: R,
    limit: Duration,
}

impl<R: Read + AsFd> IdleTimeout<R> {
    pub fn new(inner: R, limit: Duration) -> Self {
        Self { inner, limit }
    }
}

impl<R: Read + AsFd> Read for IdleTimeout<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = Timespec::try_from(self.limit)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "idle limit too large"))?;
        loop {
            let mut fds = [PollFd::new(&self.inner, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                // Readable, hung up or in error: the read itself tells which.
                Ok(n) if n > 0 => return self.inner.read(buf),
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no data for {:?}: the sender stalled or went away",
                            self.limit
                        ),
                    ));
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Reads from `inner` until `limit` after it was made, then fails with `TimedOut`: a sender
/// that trickles a byte now and then never trips [`IdleTimeout`], but no read starts after the
/// deadline (a read already waiting ends within the inner reader's own bound).
pub struct Deadline<R> {
    inner: R,
    until: Instant,
    limit: Duration,
}

impl<R: Read> Deadline<R> {
    pub fn new(inner: R, limit: Duration) -> Self {
        Self {
            inner,
            until: Instant::now() + limit,
            limit,
        }
    }
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.until {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the bundle did not arrive within {:?}: the sender is too slow",
                    self.limit
                ),
            ));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn passes_data_through_and_gives_up_on_silence() {
        let (reader, writer) = rustix::pipe::pipe().expect("pipe");
        let mut writer = std::fs::File::from(writer);
        writer.write_all(b"abc").expect("write");
        let mut idle = IdleTimeout::new(std::fs::File::from(reader), Duration::from_millis(50));
        let mut buf = [0u8; 8];
        assert_eq!(idle.read(&mut buf).expect("data"), 3);
        let err = idle.read(&mut buf).expect_err("silence");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("no data for 50ms"), "{err}");
        drop(writer);
        assert_eq!(idle.read(&mut buf).expect("end of input"), 0);
    }
}
