//! A reader that gives up when its input is silent for too long, so that a controller that
//! stalls mid-upload (a hung process, a half-open connection) does not hold the node's lock
//! until the TCP connection dies: staging fails, cleans up and frees the lock.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// How long `serve` waits for the next bytes of a bundle: shorter than the controller's
/// default command timeout (600 s), longer than any pause of a live upload.
pub const STDIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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
