//! HTTPS between the nodes of a cluster: certificates made here with openssl (a CA and a node
//! certificate for 127.0.0.1), `listen_tls` served by rustls, `cluster.require_tls` sending
//! node-to-node calls to the peers' HTTPS address with the cluster token and refusing that
//! token over plain HTTP, and a node that trusts another CA unable to call its peers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestServer;
use fleet_tests::TestDb;
use serde_json::Value;

const CLUSTER_TOKEN: &str = "test-cluster-token-0123456789";

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl)");
    assert!(ok.success(), "openssl {args:?}");
}

/// A CA named `name` in `dir` and a certificate it signed for 127.0.0.1: (ca.pem, cert, key).
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    let (cert, key, csr) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    let subject = format!("/CN={name} test CA");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-days", "1", "-subj", &subject, "-keyout", &ca_key, "-out", &ca,
    ]);
    openssl(dir, &args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-subj", "/CN=127.0.0.1", "-keyout", &key, "-out", &csr]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    );
    (dir.join(ca), dir.join(cert), dir.join(key))
}

/// A loopback port free now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

fn tls_extra(ca: &Path, cert: &Path, key: &Path) -> (String, u16) {
    let port = free_port();
    let extra = format!(
        "cluster_token = \"{CLUSTER_TOKEN}\"\nlisten_tls = \"127.0.0.1:{port}\"\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\ntls_ca_file = {ca:?}\n[cluster]\nrequire_tls = true\n"
    );
    (extra, port)
}

/// GET `path` over HTTPS on `port`, trusting `ca`, with `token`: status and body.
async fn https_get(port: u16, ca: &Path, path: &str, token: &str) -> std::io::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = fleet_tls::client_config(ca).map_err(std::io::Error::other)?;
    let addr = format!("127.0.0.1:{port}");
    let mut stream = fleet_tls::connect(&addr, Some(&config)).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Bodies may come chunked: the JSON object is between the first `{` and the last `}`.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Ok((status, json))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_call_each_other_over_tls_with_the_cluster_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificates(dir.path(), "good");
    let (other_ca, _, _) = certificates(dir.path(), "other");
    let db = TestDb::new("tls").await;
    let (extra1, port1) = tls_extra(&ca, &cert, &key);
    let (extra2, _) = tls_extra(&ca, &cert, &key);
    let one = TestServer::start_node(&db, "t1", &extra1).await;
    let _two = TestServer::start_node(&db, "t2", &extra2).await;
    for _ in 0..200 {
        let (_, cluster) = one.call("GET", "/api/cluster", "").await;
        if cluster["members"].as_array().map_or(0, Vec::len) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Node-to-node: t1 asks t2 over HTTPS with the cluster token.
    let (status, health) = one.call("GET", "/health?all_nodes=true", "").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["nodes"]["t2"]["status"], "ok", "{health}");

    // HTTPS answers the API; the cluster token reads...
    let (status, cluster) = https_get(port1, &ca, "/api/cluster", CLUSTER_TOKEN)
        .await
        .expect("https");
    assert_eq!(status, 200, "{cluster}");
    assert!(
        cluster["members"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| m["listen_tls"].is_string())),
        "{cluster}"
    );
    // ...but not over plain HTTP on a cluster that requires TLS, and it never writes.
    let auth = format!("Bearer {CLUSTER_TOKEN}");
    let (status, body) = fleet_tests::call_with_headers(
        one.addr,
        "GET",
        "/api/cluster",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("require_tls"), "{body}");
    let (status, _) = https_get(port1, &ca, "/admin/resume", CLUSTER_TOKEN)
        .await
        .expect("https");
    assert_eq!(status, 405, "GET on a POST route");

    // A client that trusts another CA does not get through the handshake.
    assert!(
        https_get(port1, &other_ca, "/health", CLUSTER_TOKEN)
            .await
            .is_err()
    );

    // A node that trusts another CA cannot vouch for its peers: they are unreachable to it.
    let (extra3, _) = tls_extra(&other_ca, &cert, &key);
    let three = TestServer::start_node(&db, "t3", &extra3).await;
    let mut last = Value::Null;
    for _ in 0..200 {
        let (status, health) = three.call("GET", "/health?all_nodes=true", "").await;
        last = health;
        if status == 503 && last["nodes"]["t1"]["status"] == "unreachable" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(last["nodes"]["t1"]["status"], "unreachable", "{last}");
}

#[test]
fn tls_settings_are_checked_when_the_config_is_read() {
    let path = Path::new("/etc/fleet/server.toml");
    let base = "node = \"n\"\nshared_storage = \"/x\"\npostgres_url = \"postgres://x\"\nredis_url = \"redis://x\"\n";
    for (extra, says) in [
        (
            "listen_tls = \"127.0.0.1:8443\"\n",
            "listen_tls needs tls_cert_file and tls_key_file",
        ),
        (
            "tls_cert_file = \"c.pem\"\n",
            "mean nothing without listen_tls",
        ),
        (
            "[cluster]\nrequire_tls = true\n",
            "cluster.require_tls needs listen_tls and tls_ca_file",
        ),
        (
            "listen_tls = \"nowhere\"\ntls_cert_file = \"c\"\ntls_key_file = \"k\"\n",
            "listen_tls `nowhere` is not an address:port",
        ),
        (
            "cluster_token = \"short\"\n",
            "cluster_token must have at least 16 characters",
        ),
        ("[tenants.Acme]\n", "not a tenant name"),
        (
            "[tenants.acme]\nsources = [\"nope\"]\n",
            "tenants.acme.sources names `nope`",
        ),
    ] {
        let err = fleet_server::Config::parse(&format!("{base}{extra}"), path).expect_err(extra);
        assert!(err.to_string().contains(says), "{extra}: {err}");
    }
}
