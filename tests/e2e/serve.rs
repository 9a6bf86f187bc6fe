//! `fleet serve` as a process: it says where it listens, logs a user in over real HTTP, keeps
//! the session's cookie HttpOnly, collects the inventory's nodes (here one where nothing
//! listens: its SSH failure is shown, not a status), and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fleet_tests::Provisioned;

use super::support::fleet;

/// One HTTP/1.1 request on a fresh connection; the whole answer as text.
pub(super) fn http(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    answer
}

#[test]
fn fleet_serve_logs_users_in_and_stops_on_sigterm() {
    let data = tempfile::tempdir().expect("tempdir");
    add_user_in(data.path(), "alice", "admin", "a long enough password");

    let key = data.path().join("deploy_key");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(made.success());
    let inventory = one_node_inventory(
        data.path(),
        "dedicated",
        "gone-1",
        &format!("deploy_identity_file: {key:?}"),
    );
    let mut command = fleet();
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--collect-every",
            "1s",
            "-i",
        ])
        .arg(&inventory)
        .env("FLEET_DATA_DIR", data.path());
    let served = Served::start(command);
    let addr = served.addr.clone();

    let body = "user=alice&password=a+long+enough+password&next=%2Fapi%2Fme";
    let answer = http(
        &addr,
        &format!(
            "POST /login HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {answer}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("pair");
    let me = http(
        &addr,
        &format!(
            "GET /api/me HTTP/1.1\r\nHost: {addr}\r\nCookie: {pair}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(me.starts_with("HTTP/1.1 200"), "{me}");
    assert!(
        me.contains(r#""name":"alice""#) && me.contains(r#""role":"admin""#),
        "{me}"
    );
    // The collector tried the node: nothing listens there, and the page says so.
    let asked = Instant::now();
    let nodes = loop {
        let nodes = http(
            &addr,
            &format!(
                "GET /api/nodes HTTP/1.1\r\nHost: {addr}\r\nCookie: {pair}\r\nConnection: close\r\n\r\n"
            ),
        );
        if nodes.contains(r#""state":"unreachable""#) {
            break nodes;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "never collected: {nodes}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(nodes.contains(r#""name":"gone-1""#), "{nodes}");
    assert!(nodes.contains("refused"), "{nodes}");
    let anonymous = http(
        &addr,
        &format!("GET /api/me HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");

    let (status, rest) = served.stop();
    assert!(status.success(), "{status}");
    assert!(rest.contains("fleet serve: stopped"), "{rest}");
}

/// A running `fleet serve`: its address and its stdout, stopped by SIGTERM (`stop`, or on
/// drop).
pub(super) struct Served {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    pub(super) addr: String,
}

impl Served {
    pub(super) fn start(mut command: std::process::Command) -> Served {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("fleet serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("the listening line");
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Served { child, out, addr }
    }

    /// SIGTERM; how it exited (within 20 s) and the rest of what it printed.
    pub(super) fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal();
        let asked = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(20),
                "fleet serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).expect("the rest");
        (status, rest)
    }

    fn signal(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// Logs `user` in; the `Cookie` header's value.
    pub(super) fn login(&self, user: &str, password: &str) -> String {
        let addr = &self.addr;
        let body = format!("user={user}&password={}", password.replace(' ', "+"));
        let answer = http(
            addr,
            &format!(
                "POST /login HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        let cookie = answer
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .unwrap_or_else(|| panic!("no cookie: {answer}"));
        cookie.split(';').next().expect("pair").to_owned()
    }

    pub(super) fn get(&self, path: &str, cookie: &str) -> String {
        let addr = &self.addr;
        http(
            addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            ),
        )
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal();
            let _ = self.child.wait();
        }
    }
}

/// The JSON body of an answer.
fn json_body(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
}

#[test]
fn a_rollout_started_in_the_browser_is_carried_out_and_followed_live() {
    let mut c = Provisioned::start(
        Path::new(env!("CARGO_BIN_EXE_fleet")),
        "e2e_serve_rollout",
        3,
    );
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        c.build_release(v);
    }
    c.activate("1.0.0");
    c.with_logs(web_rollout_scenario);
}

/// `fleet user add NAME --role ROLE` with `password` on stdin, the state in `data`.
fn add_user_in(data: &Path, name: &str, role: &str, password: &str) {
    super::users::with_stdin(
        data,
        &["user", "add", name, "--role", role],
        &format!("{password}\n"),
    )
    .ok();
}

/// The same in the provisioned fleet's data directory.
pub(super) fn add_user(c: &Provisioned, name: &str, role: &str, password: &str) {
    add_user_in(&c.data, name, role, password);
}

/// `fleet.yaml` in `dir`: customer `acme` (`mode`) with one cluster `prod` of one node `name`
/// on 127.0.0.1, SSH port 1 (nothing listens there), `ssh` more of its defaults' SSH settings.
fn one_node_inventory(dir: &Path, mode: &str, name: &str, ssh: &str) -> std::path::PathBuf {
    let inventory = dir.join("fleet.yaml");
    let more = if ssh.is_empty() {
        String::new()
    } else {
        format!(", {ssh}")
    };
    std::fs::write(
        &inventory,
        format!(
            "defaults:\n  ssh: {{ user: ops, port: 1{more} }}\ncustomers:\n  acme:\n    mode: {mode}\n    clusters:\n      prod:\n        redis_url: \"redis://127.0.0.1:6379/0\"\n        postgres_url: \"postgres://127.0.0.1/x\"\n        shared_storage: /srv/shared\n        nodes:\n          - {{ name: {name}, host: 127.0.0.1, node_root: /srv/fleet }}\n"
        ),
    )
    .expect("inventory");
    inventory
}

/// `fleet serve` on the provisioned fleet: its inventory, its release store, the nodes'
/// status collected every second.
pub(super) fn serve_provisioned(c: &Provisioned) -> Served {
    let (store, inventory) = (
        c.store.to_string_lossy().into_owned(),
        c.inventory.to_string_lossy().into_owned(),
    );
    Served::start(c.command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--collect-every",
        "1s",
        "--store",
        &store,
        "-i",
        &inventory,
    ]))
}

fn web_rollout_scenario(c: &mut Provisioned) {
    let password = "an operator password";
    add_user(c, "op", "operator", password);
    let served = serve_provisioned(c);
    let cookie = served.login("op", password);
    let me = json_body(&served.get("/api/me", &cookie));
    // The store's releases, as `fleet release list` reads them.
    let releases = json_body(&served.get("/api/releases", &cookie));
    let versions: Vec<&str> = releases["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| r["version"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(versions, ["1.0.0", "1.1.0", "1.2.0"], "{releases}");
    assert!(
        releases["releases"][0]["signed_by"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{releases}"
    );
    let csrf = me["csrf"].as_str().expect("csrf").to_owned();

    // The live stream, read on a thread of its own from before the start.
    let events = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (addr, cookie, events) = (served.addr.clone(), cookie.clone(), events.clone());
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            s.write_all(
                format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n")
                    .as_bytes(),
            )
            .expect("write");
            let started = Instant::now();
            let mut buf = [0u8; 65536];
            while started.elapsed() < Duration::from_secs(240) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut e = events.lock().expect("events");
                        e.push_str(&String::from_utf8_lossy(&buf[..n]));
                        if e.matches(r#""outcome":"committed""#).count() >= 3
                            && e.contains(r#""state":"committed""#)
                        {
                            break;
                        }
                    }
                    Err(_) => continue,
                }
            }
        })
    };

    // The operator starts the rollout with the page's form.
    let addr = &served.addr;
    let body = format!(
        "csrf={csrf}&version=1.1.0&cluster=test%2Flocal&max_unavailable=1&canary=&min_healthy_secs=1"
    );
    let answer = http(
        addr,
        &format!(
            "POST /rollouts HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nCookie: {cookie}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let location = answer
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("no location: {answer}"))
        .trim()
        .to_owned();
    let id = location
        .strip_prefix("/rollouts/")
        .expect("a rollout page")
        .to_owned();

    // The server watches it to its end, and the store says so.
    let asked = Instant::now();
    let rollout = loop {
        let r = json_body(&served.get(&format!("/api/rollouts/{id}"), &cookie));
        if r["state"] == "committed" {
            break r;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(240),
            "not committed: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let outcomes: Vec<&str> = rollout["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        outcomes,
        ["committed", "committed", "committed"],
        "{rollout}"
    );
    for k in 0..3 {
        assert_eq!(c.serving(k), "1.1.0");
    }

    // The live stream showed the nodes' progress as it happened: a step under way on a node
    // before its outcome, then every outcome, without anyone asking again.
    reader.join().expect("the reader");
    let seen = events.lock().expect("events").clone();
    assert!(seen.contains("event: rollout"), "{seen}");
    assert!(
        seen.contains(r#""outcome":null"#) && seen.contains(r#""step":"gate""#),
        "no step seen under way: {seen}"
    );
    assert!(
        seen.matches(r#""outcome":"committed""#).count() >= 3,
        "{seen}"
    );
    let page = served.get(&location, &cookie);
    assert!(
        page.contains("data-rollout-node=\"") && page.contains("committed"),
        "{page}"
    );

    // The other way round: a rollout started from the command line (detached: nobody but
    // the server watches it) shows up in the server, which follows it to its end.
    let store = c.store.to_string_lossy().into_owned();
    let started = c
        .run_i(&[
            "rollout",
            "start",
            "1.2.0",
            "--store",
            &store,
            "--detach",
            "--json",
            "--min-healthy",
            "1",
        ])
        .ok()
        .json();
    let cli_id = started["rollouts"][0]["rollout"]
        .as_str()
        .or_else(|| started["clusters"][0]["rollout"].as_str())
        .unwrap_or_else(|| panic!("no rollout id: {started}"))
        .to_owned();
    let asked = Instant::now();
    loop {
        let r = json_body(&served.get(&format!("/api/rollouts/{cli_id}"), &cookie));
        if r["state"] == "committed" {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(240),
            "the CLI's rollout, as the server sees it: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for k in 0..3 {
        assert_eq!(c.serving(k), "1.2.0");
    }

    // Audited as the web user.
    let audit = c.run(&["audit", "--json"]).ok().json();
    let rows = audit["rows"].as_array().expect("rows");
    assert!(
        rows.iter().any(|r| r["command"] == "rollout start"
            && r["os_user"] == "web:op"
            && r["result"].as_str().is_some_and(|s| s.starts_with("ok"))),
        "{audit}"
    );
}

/// `fleet serve --tls-cert --tls-key`: HTTPS with a certificate made here, its session cookie
/// `Secure`; plain HTTP on that port gets no page; a certificate file that is not one is one
/// clear error and no server.
#[test]
fn fleet_serve_speaks_tls_from_cert_and_key_files() {
    let data = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (data.path().join("cert.pem"), data.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success());
    add_user_in(data.path(), "alice", "viewer", "a long enough password");
    let inventory = one_node_inventory(data.path(), "airgapped", "far-1", "");

    // A key file that is not one: one clear error naming it, exit 1.
    let wrong = fleet()
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&inventory)
        .arg("-i")
        .arg(&inventory)
        .env("FLEET_DATA_DIR", data.path())
        .output()
        .expect("fleet serve");
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("TLS:") && stderr.contains("fleet.yaml"),
        "{stderr}"
    );

    let mut command = fleet();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("-i")
        .arg(&inventory)
        .env("FLEET_DATA_DIR", data.path());
    let served = Served::start(command);
    let url = format!("https://{}", served.addr);
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-i", "--max-time", "20", "--cacert"])
            .arg(&cert)
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let page = curl(&[&format!("{url}/login")]);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let origin = format!("Origin: {url}");
    let login = curl(&[
        "-H",
        &origin,
        "--data",
        "user=alice&password=a+long+enough+password",
        &format!("{url}/login"),
    ]);
    assert!(login.starts_with("HTTP/1.1 303"), "{login}");
    let cookie = login
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {login}"));
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Plain HTTP to the TLS port: no page.
    let plain = std::process::Command::new("curl")
        .args([
            "-s",
            "-i",
            "--max-time",
            "10",
            &format!("http://{}/login", served.addr),
        ])
        .output()
        .expect("curl");
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("200 OK"));
    let (status, rest) = served.stop();
    assert!(status.success(), "{status}");
    assert!(rest.contains("stopped (was on https://"), "{rest}");
}
