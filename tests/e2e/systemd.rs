//! The agent's systemd unit on a node that runs real systemd: a container booted with
//! `systemd-nspawn -b` (systemd as PID 1, `fleet_tests::NspawnNode`) provisioned by the
//! `fleet` binary as root, then checked over SSH: the unit installed, enabled and active, its
//! main process `fleet-agent run`, the daemon answering `fleet status`, a release of the
//! project's own binaries activated and its server healthy inside the unit's sandbox, and a
//! second provision that changes nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_tests::{NspawnNode, TestDb, TestRedis, keygen_all, own_binaries};
use serde_json::Value;

use crate::support::{Run, Tree, release_build, run_on, trust_root};

/// Where provisioning puts the node inside the container.
const NODE_ROOT: &str = "/opt/fleet";
const NODE: &str = "nspawn-1";
/// How long the agent may take to answer `status` as running once its unit started.
const AGENT_UP_WITHIN: Duration = Duration::from_secs(30);

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

struct Site {
    dir: tempfile::TempDir,
    node: NspawnNode,
    inv: String,
}

impl Site {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn fleet(&self, args: &[&str]) -> Run {
        run_on(&self.inv, &self.path("data"), args)
    }

    /// Runs `script` on the node as root with the bootstrap key; its trimmed stdout.
    fn on_node(&self, script: &str) -> String {
        let out = self
            .node
            .ssh_command(&self.path("bootstrap_ed25519"), &self.path("known_hosts"))
            .arg(script)
            .output()
            .expect("ssh runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

#[test]
fn provision_installs_enables_and_starts_the_agent_unit_under_real_systemd() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Declared first, dropped last: the container powers off before its database goes.
    let db = rt.block_on(TestDb::new("e2e_systemd"));
    let redis = TestRedis::new("e2e_systemd");
    let dir = tempfile::Builder::new()
        .prefix("fleet-e2e-systemd-")
        .tempdir()
        .expect("temporary folder");
    let bootstrap = dir.path().join("bootstrap_ed25519");
    keygen_all(
        &[bootstrap.clone(), dir.path().join("deploy_ed25519")],
        "fleet-e2e",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let node = NspawnNode::boot(&dir.path().join("node"), &bootstrap.with_extension("pub"))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "container {} booted in {:?}",
        node.machine,
        started.elapsed()
    );

    let inv = dir.path().join("inventory.yaml");
    let q = |v: &str| Value::from(v).to_string();
    let text = format!(
        "defaults:\n  ssh:\n    user: root\n    port: {port}\n    identity_file: {id}\n    deploy_identity_file: {deploy}\n    known_hosts: {kh}\n\
         customers:\n  test:\n    mode: dedicated\n    clusters:\n      local:\n        redis_url: \"redis://127.0.0.1:6379/0\"\n        postgres_url: {pg}\n        shared_storage: {shared}\n        rollout: {{ min_healthy_secs: 2 }}\n        vars: {{ redis_prefix: {prefix} }}\n        nodes:\n          - {{ name: {NODE}, host: {host}, node_root: {NODE_ROOT}, vars: {{ listen: {listen}, agent_metrics_listen: {metrics} }} }}\n",
        port = node.port,
        id = q(&s(&bootstrap)),
        deploy = q(&s(&dir.path().join("deploy_ed25519"))),
        kh = q(&s(&dir.path().join("known_hosts"))),
        pg = q(&db.url),
        shared = q(&format!("{NODE_ROOT}/shared")),
        prefix = q(&redis.prefix),
        host = q(&node.addr.to_string()),
        listen = q(&format!("{}:8080", node.addr)),
        metrics = q(&format!("{}:9464", node.addr)),
    );
    std::fs::write(&inv, text).expect("inventory");
    let site = Site {
        inv: s(&inv),
        dir,
        node,
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&site)));
    if let Err(panic) = outcome {
        let journal = site.on_node(
            "systemctl status --no-pager fleet-agent.service 2>&1; journalctl --no-pager -n 40 -u fleet-agent.service 2>&1",
        );
        eprintln!(
            "the agent's unit on the node:\n{journal}\n\nthe container's console (last lines): {}",
            site.node.console_tail()
        );
        std::panic::resume_unwind(panic);
    }
}

fn scenario(site: &Site) {
    let keys = site.path("keys");
    let root = site.path("root.json");
    trust_root(&keys, &root);
    site.fleet(&["hosts", "trust"]).ok();
    // The node runs systemd as PID 1: what the provision probe looks for is there.
    assert_eq!(
        site.on_node("test -d /run/systemd/system && ps -p 1 -o comm="),
        "systemd"
    );

    let agent = s(&own_binaries()
        .unwrap_or_else(|e| panic!("{e}"))
        .join("fleet-agent"));
    let started = Instant::now();
    let first = site
        .fleet(&["provision", "--trust", &s(&root), "--agent", &agent])
        .ok();
    eprintln!("provisioned in {:?}:\n{}", started.elapsed(), first.stdout);
    assert!(
        !first.stdout.contains("no systemd on the node"),
        "{}",
        first.stdout
    );

    // Installed, enabled, running: the unit's main process is the agent's daemon.
    assert_eq!(
        site.on_node("systemctl is-enabled fleet-agent.service"),
        "enabled"
    );
    assert_eq!(
        site.on_node("systemctl is-active fleet-agent.service"),
        "active"
    );
    let unit = site.on_node("cat /etc/systemd/system/fleet-agent.service");
    assert!(
        unit.contains(&format!(
            "ExecStart=\"{NODE_ROOT}/bin/fleet-agent\" run --root \"{NODE_ROOT}\""
        )),
        "{unit}"
    );
    let pid = site.on_node("systemctl show -p MainPID --value fleet-agent.service");
    assert!(pid.parse::<u32>().is_ok_and(|p| p > 0), "MainPID {pid:?}");
    let cmdline = site.on_node(&format!("tr '\\0' ' ' < /proc/{pid}/cmdline"));
    assert_eq!(
        cmdline,
        format!("{NODE_ROOT}/bin/fleet-agent run --root {NODE_ROOT}")
    );

    // The daemon answers `status` through the deploy key: running, no release yet, so its
    // server is stopped.
    let deadline = Instant::now() + AGENT_UP_WITHIN;
    let node = loop {
        let json = site.fleet(&["status", "--json"]).ok().json();
        let node = json["nodes"][0].clone();
        if node["daemon"].is_object() {
            break node;
        }
        assert!(
            Instant::now() < deadline,
            "no daemon in status within {AGENT_UP_WITHIN:?}: {json}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(node["node"], NODE, "{node}");
    let daemon = &node["daemon"];
    // The daemon that answers is the unit's main process.
    assert_eq!(daemon["agent_pid"].to_string(), pid, "{node}");
    assert_eq!(daemon["server"], "stopped", "{node}");
    assert_eq!(node["active"], Value::Null, "{node}");
    // Its heartbeat reached the host's Redis from inside the container (under the unit's
    // RestrictAddressFamilies), waited for like the daemon's first report.
    let deadline = Instant::now() + AGENT_UP_WITHIN;
    let mut daemon = daemon.clone();
    while !daemon["heartbeat_age_ms"].is_u64() {
        assert!(
            Instant::now() < deadline,
            "no heartbeat within {AGENT_UP_WITHIN:?}: {daemon}"
        );
        std::thread::sleep(Duration::from_millis(250));
        daemon = site.fleet(&["status", "--json"]).ok().json()["nodes"][0]["daemon"].clone();
    }
    assert_eq!(daemon["redis_error"], Value::Null, "{daemon}");

    // A release of the project's own binaries: the daemon runs its server under the unit's
    // hardening (its sandbox is the server's too) and the server comes up healthy.
    let bin_dir = own_binaries().unwrap_or_else(|e| panic!("{e}"));
    let store = s(&site.path("store"));
    release_build(
        "1.0.0",
        Tree::Bins(&bin_dir),
        &keys.join("release.key"),
        Path::new(&store),
    );
    site.fleet(&["push", "1.0.0", "--store", &store]).ok();
    let activated = site.fleet(&["activate", "1.0.0", "--json"]).ok().json();
    assert_eq!(activated["nodes"][0]["server"], "committed", "{activated}");
    let status = site.fleet(&["status", "--json"]).ok().json();
    let node = &status["nodes"][0];
    assert_eq!(node["active"], "1.0.0", "{status}");
    assert_eq!(node["daemon"]["server"], "healthy", "{status}");
    assert_eq!(node["daemon"]["server_release"], "1.0.0", "{status}");
    assert_eq!(node["daemon"]["agent_pid"].to_string(), pid, "{status}");
    // The server is in the unit's control group: systemd would stop it with the agent.
    let server_pid = node["daemon"]["server_pid"].to_string();
    let cgroup = site.on_node(&format!("cat /proc/{server_pid}/cgroup"));
    assert!(
        cgroup.contains("/system.slice/fleet-agent.service"),
        "server {server_pid}: {cgroup}"
    );

    // A second run finds everything in place: nothing written, the unit unchanged.
    let again = site
        .fleet(&[
            "provision",
            "--trust",
            &s(&root),
            "--agent",
            &agent,
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(again["nodes"][0]["result"], "unchanged", "{again}");
    assert_eq!(
        site.on_node("systemctl show -p MainPID --value fleet-agent.service"),
        pid,
        "the agent was restarted by an unchanged provision"
    );
}
