//! A release server for the install script's tests: a plain HTTP/1.1 file server of one
//! folder on a loopback port (a thread per connection), which records every request line
//! (absolute-form targets too, so a request sent through it as a proxy shows), and can cut a
//! file's download midway (the full `Content-Length` announced, half the bytes sent, then the
//! connection closed) or hold a file back until released. Not a general web server: GET only,
//! no keep-alive, no ranges.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<String>>,
    cut: Mutex<HashSet<String>>,
    held: Mutex<HashSet<String>>,
    stop: AtomicBool,
}

/// A running server; dropping it stops it.
pub struct ReleaseServer {
    pub addr: SocketAddr,
    dir: PathBuf,
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ReleaseServer {
    /// Serves `dir` on a free port of 127.0.0.1.
    pub fn start(dir: &Path) -> ReleaseServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let shared = Arc::new(Shared::default());
        let (root, state) = (dir.to_owned(), shared.clone());
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if state.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (root, state) = (root.clone(), state.clone());
                thread::spawn(move || serve(stream, &root, &state));
            }
        });
        ReleaseServer {
            addr,
            dir: dir.to_owned(),
            shared,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every request line so far (`GET /latest HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().expect("lock").clone()
    }

    /// Cuts downloads of file `name` midway from now on (`false`: serves it whole again).
    pub fn cut(&self, name: &str, on: bool) {
        let mut cut = self.shared.cut.lock().expect("lock");
        if on {
            cut.insert(name.to_owned());
        } else {
            cut.remove(name);
        }
    }

    /// Holds downloads of file `name` back (headers and half the bytes sent, the rest
    /// waiting) until `hold(name, false)`.
    pub fn hold(&self, name: &str, on: bool) {
        let mut held = self.shared.held.lock().expect("lock");
        if on {
            held.insert(name.to_owned());
        } else {
            held.remove(name);
        }
    }
}

impl Drop for ReleaseServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.held.lock().expect("lock").clear();
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, root: &Path, state: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let line = line.trim_end().to_owned();
    // The headers: read and ignored.
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header.trim_end().is_empty() => break,
            Ok(_) => {}
        }
    }
    state.requests.lock().expect("lock").push(line.clone());
    let mut out = stream;
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    // A proxy request names the whole URL: keep its path.
    let path = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let name = path.trim_start_matches('/');
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        let _ = out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let Ok(bytes) = std::fs::read(root.join(name)) else {
        let _ = out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    );
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let half = bytes.len() / 2;
    let cut = state.cut.lock().expect("lock").contains(name);
    let held = state.held.lock().expect("lock").contains(name);
    if cut || held {
        if out.write_all(&bytes[..half]).is_err() || out.flush().is_err() {
            return;
        }
        if cut {
            return;
        }
        while state.held.lock().expect("lock").contains(name) {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = out.write_all(&bytes[half..]);
    } else {
        let _ = out.write_all(&bytes);
    }
}
