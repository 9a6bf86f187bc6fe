//! A Redis key prefix of its own per test, on the shared Redis at 127.0.0.1:6379; not a Redis
//! client, and never a flush or a restart of that Redis (other tests use it at the same time):
//! a test that needs Redis to go away starts a private `redis-server`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::unique::unique_name;

/// The shared Redis every test may use, each under its own prefix.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How to start the shared Redis (named in the failure of a test that finds none).
pub const START_REDIS: &str =
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no";

const REDIS_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 6379);
/// How long the shared Redis may take to answer a PING before a test gives up on it.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A key prefix no other test uses, on a Redis that answered.
#[derive(Clone, Debug)]
pub struct TestRedis {
    pub url: String,
    /// `LABEL_PID_SEQ_NANOS:`, to put before every key (or to give a server as its prefix).
    pub prefix: String,
}

impl TestRedis {
    /// A new prefix for this test; panics, saying how to start Redis, when it does not answer.
    pub fn new(label: &str) -> TestRedis {
        if let Err(e) = ping() {
            panic!("Redis at 127.0.0.1:6379 is needed: {e}; start it with `{START_REDIS}`");
        }
        TestRedis {
            url: REDIS_URL.to_owned(),
            prefix: format!("{}:", unique_name(label)),
        }
    }

    /// `key` under this test's prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// One PING over a plain connection, each step bounded by [`PING_TIMEOUT`].
fn ping() -> std::io::Result<()> {
    let addr = SocketAddr::from(REDIS_ADDR);
    let mut stream = TcpStream::connect_timeout(&addr, PING_TIMEOUT)?;
    stream.set_read_timeout(Some(PING_TIMEOUT))?;
    stream.set_write_timeout(Some(PING_TIMEOUT))?;
    stream.write_all(b"PING\r\n")?;
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer)?;
    if &answer == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "it answered PING with {:?}",
            String::from_utf8_lossy(&answer)
        )))
    }
}

/// A `redis-server` of the test's own on a free loopback port, keeping nothing on disk, for a
/// test that stops Redis or starts it empty (the shared one must not be touched). Stopped
/// (SIGKILL, reaped) on drop.
pub struct PrivateRedis {
    pub port: u16,
    /// Also listening on this Unix socket (mode 0777), when started with one.
    pub unixsocket: Option<std::path::PathBuf>,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts one on a free port; panics, saying what to install, when it cannot.
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = PrivateRedis {
            port,
            unixsocket: None,
            child: None,
        };
        redis.restart();
        redis
    }

    /// [`PrivateRedis::start`], also listening on the Unix socket `socket` (for a container
    /// with no network that has its folder bound in).
    pub fn start_with_socket(socket: &std::path::Path) -> PrivateRedis {
        let mut redis = PrivateRedis::start();
        redis.unixsocket = Some(socket.to_owned());
        redis.restart();
        for _ in 0..400 {
            if socket.exists() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "redis-server made no socket {} within 10 s",
            socket.display()
        );
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGKILL: whatever it held is gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port (after [`PrivateRedis::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(self.unixsocket.iter().flat_map(|path| {
                [
                    "--unixsocket".into(),
                    path.as_os_str().to_owned(),
                    "--unixsocketperm".into(),
                    "777".into(),
                ]
            }))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is needed (apt-get install -y redis-server)");
        self.child = Some(child);
        for _ in 0..400 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not listen on {} within 10 s", self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_test_gets_its_own_prefix() {
        let (a, b) = (TestRedis::new("helper"), TestRedis::new("helper"));
        assert_ne!(a.prefix, b.prefix);
        assert!(a.prefix.starts_with("helper_") && a.prefix.ends_with(':'));
        assert_eq!(a.key("leader"), format!("{}leader", a.prefix));
        assert_eq!(a.url, REDIS_URL);
    }
}
