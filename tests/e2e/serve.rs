//! `fleet serve` as a process: it says where it listens, logs a user in over real HTTP, keeps
//! the session's cookie HttpOnly, collects the inventory's nodes (here one where nothing
//! listens: its SSH failure is shown, not a status), and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::support::fleet;

/// One HTTP/1.1 request on a fresh connection; the whole answer as text.
fn http(addr: &str, request: &str) -> String {
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
    let mut add = fleet()
        .args(["user", "add", "alice", "--role", "admin"])
        .env("FLEET_DATA_DIR", data.path())
        .stdin(Stdio::piped())
        .spawn()
        .expect("fleet user add");
    add.stdin
        .take()
        .expect("stdin")
        .write_all(b"a long enough password\n")
        .expect("password");
    assert!(add.wait().expect("add").success());

    let key = data.path().join("deploy_key");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(made.success());
    let inventory = data.path().join("fleet.yaml");
    std::fs::write(
        &inventory,
        format!("defaults:\n  ssh: {{ deploy_identity_file: {key:?} }}\n") + "customers:\n  acme:\n    mode: dedicated\n    clusters:\n      prod:\n        redis_url: \"redis://127.0.0.1:6379/0\"\n        postgres_url: \"postgres://127.0.0.1/x\"\n        shared_storage: /srv/shared\n        nodes:\n          - { name: gone-1, host: 127.0.0.1, node_root: /srv/fleet, ssh: { user: ops, port: 1 } }\n",
    )
    .expect("inventory");
    let mut server = fleet()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--collect-every",
            "1s",
            "-i",
        ])
        .arg(&inventory)
        .env("FLEET_DATA_DIR", data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fleet serve");
    let mut out = BufReader::new(server.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the listening line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();

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

    let pid = rustix::process::Pid::from_raw(server.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().expect("wait") {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "fleet serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("the rest");
    assert!(rest.contains("fleet serve: stopped"), "{rest}");
}
