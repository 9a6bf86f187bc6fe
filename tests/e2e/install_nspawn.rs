//! The install script on real init systems: containers booted with `systemd-nspawn -b`
//! (systemd as PID 1; SysV init; systemd with no network at all), the release server a
//! loopback HTTP server of this test, releases of the project's own binaries. Each script run
//! is what a customer types, as root inside the container (`nsenter`), and what it left is
//! read there: the service, the agent's status, the node's links and files.
//!
//! systemd: a dry run writes nothing, and downloads through the proxy `http_proxy` names; not root is refused with the command to use; a fresh
//! install is active and healthy; the same version again changes nothing (the service's main
//! pid and the server's pid unchanged); an update moves `previous` to the old release with
//! one server restart and the agent's main pid kept; a release whose server fails health is
//! rolled back (exit 5); a script and bundle from another trust root are refused (exit 4)
//! with the pinned root and the tree untouched; a download cut midway leaves nothing behind;
//! of two runs at once one is refused naming the other's pid (exit 6); a run killed with
//! SIGKILL mid-update converges when run again; a downgrade is refused (exit 8); uninstall
//! keeps config, state and trust, and purge removes everything. A first install whose
//! download is cut leaves no folder and no user. /tmp is mounted noexec
//! throughout. SysV: install, start, status and update. Offline: the same install and update
//! from offline bundles in a container with `--private-network` (Postgres and Redis through
//! Unix sockets bound in).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_tests::{
    Init, NspawnNode, NspawnOptions, PrivateRedis, ReleaseServer, TestDb, TestRedis, keygen_all,
    own_binaries,
};

use crate::support::{Tree, release_build, run, run_on, trust_root};

const ROOT: &str = "/opt/fleet";
const EXIT_VERIFY: i32 = 4;
const EXIT_ROLLED_BACK: i32 = 5;
const EXIT_LOCKED: i32 = 6;
const EXIT_NOT_ROOT: i32 = 7;
const EXIT_DOWNGRADE: i32 = 8;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// What one command run in a container did.
struct Ran {
    code: Option<i32>,
    out: String,
}

impl Ran {
    fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "{}", self.out);
        self.out
    }
}

/// A booted container and what the test knows about it.
struct Box_ {
    node: NspawnNode,
    name: &'static str,
}

impl Box_ {
    fn sh(&self, script: &str) -> Ran {
        let out = self
            .node
            .exec(script, &[])
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        Ran {
            code: out.status.code(),
            out: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Its trimmed stdout+stderr, which must have succeeded.
    fn get(&self, script: &str) -> String {
        self.sh(script).ok().trim().to_owned()
    }

    fn status(&self) -> serde_json::Value {
        let line = self.get(&format!("{ROOT}/bin/fleet-agent --root {ROOT} status"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: status {line}: {e}", self.name))
    }

    fn link(&self, name: &str) -> String {
        self.get(&format!("readlink {ROOT}/{name}"))
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Every path under the node root that an install changes (not logs, not the agent's
    /// running state), with its size and the target of a link.
    fn tree(&self) -> String {
        self.get(&format!(
            "cd {ROOT} && find . -path ./logs -prune -o -path ./state -prune -o -path ./shared -prune -o -path ./.install.lock -prune -o -printf '%p %s %l\\n' | sort; ls {ROOT}/state/manifests"
        ))
    }

    fn main_pid(&self) -> String {
        self.get("systemctl show -p MainPID --value fleet-agent.service")
    }

    fn healthy(&self, version: &str) {
        let status = self.status();
        assert_eq!(status["active"], version, "{}: {status}", self.name);
        assert_eq!(
            status["daemon"]["server"], "healthy",
            "{}: {status}",
            self.name
        );
    }

    fn diagnose(&self) -> String {
        let journal = self.sh(&format!(
            "(systemctl status --no-pager fleet-agent.service; journalctl --no-pager -n 60 -u fleet-agent.service; /etc/init.d/fleet-agent status; tail -n 40 {ROOT}/logs/*) 2>&1"
        ));
        format!(
            "{}: {}\nconsole: {}",
            self.name,
            journal.out,
            self.node.console_tail()
        )
    }
}

/// Builds release `version` into `store` from the binaries in `bin_dir`, signed with `key`.
fn release(version: &str, bin_dir: &Path, key: &Path, store: &Path) {
    release_build(version, Tree::Bins(bin_dir), key, store);
}

/// `fleet installer build VERSION` into the release server's folder (and the offline tar).
fn publish(site: &Site, version: &str, store: &Path, trust: &Path) {
    run(&[
        "installer",
        "build",
        version,
        "--store",
        &s(store),
        "--trust",
        &s(trust),
        "--out",
        &s(site.server.dir()),
        "--url",
        &site.server.url(),
        "--offline",
    ])
    .ok();
}

struct Site {
    dir: tempfile::TempDir,
    server: ReleaseServer,
    store: PathBuf,
    trust: PathBuf,
}

impl Site {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs `scenario`, and when it panics prints what the containers say before going on.
fn diagnosed(boxes: &[&Box_], scenario: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(scenario)) {
        for b in boxes {
            eprintln!("{}", b.diagnose());
        }
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn the_install_script_installs_updates_rolls_back_and_uninstalls_under_systemd_sysv_and_offline() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Declared first, dropped last: the containers power off before their databases go.
    let dbs: Vec<TestDb> = ["e2e_inst_sd", "e2e_inst_sysv", "e2e_inst_off"]
        .iter()
        .map(|l| rt.block_on(TestDb::new(l)))
        .collect();
    let redis = TestRedis::new("e2e_install");
    let dir = tempfile::Builder::new()
        .prefix("fleet-e2e-install-")
        .tempdir()
        .expect("temporary folder");
    let sockets = dir.path().join("redis");
    std::fs::create_dir_all(&sockets).expect("mkdir");
    // Lives as long as the test: the offline node's Redis.
    let _private_redis = PrivateRedis::start_with_socket(&sockets.join("redis.sock"));

    // Releases of the project's own binaries, and one whose server fails its health checks.
    let keys = dir.path().join("keys");
    let trust = dir.path().join("root.json");
    trust_root(&keys, &trust);
    let store = dir.path().join("store");
    let bins = own_binaries().unwrap_or_else(|e| panic!("{e}"));
    let release_key = keys.join("release.key");
    // In version order: a node refuses a release whose counter is below one it ran.
    for v in ["1.0.0", "1.1.0"] {
        release(v, &bins, &release_key, &store);
    }
    let failing = dir.path().join("failing-bin");
    std::fs::create_dir_all(&failing).expect("mkdir");
    std::fs::copy(bins.join("fleet-agent"), failing.join("fleet-agent")).expect("agent");
    std::fs::write(
        failing.join("etl-server"),
        "#!/bin/sh\necho failing on purpose >&2\nexit 1\n",
    )
    .expect("server");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        failing.join("etl-server"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    release("1.2.0", &failing, &release_key, &store);
    for v in ["1.4.0", "1.5.0"] {
        release(v, &bins, &release_key, &store);
    }

    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    let site = Site {
        server: ReleaseServer::start(&www),
        dir,
        store,
        trust,
    };
    publish(&site, "1.0.0", &site.store, &site.trust);

    // Three containers: systemd, SysV (both on this machine's network, so Postgres, Redis
    // and the release server answer on 127.0.0.1), and systemd with no network.
    let bootstrap = site.path("bootstrap_ed25519");
    keygen_all(std::slice::from_ref(&bootstrap), "fleet-e2e").unwrap_or_else(|e| panic!("{e}"));
    let pubkey = bootstrap.with_extension("pub");
    let boot = |name: &str, options: NspawnOptions| {
        NspawnNode::boot_with(&site.path(name), &pubkey, &options).unwrap_or_else(|e| panic!("{e}"))
    };
    let cfg_root = site.path("cfg");
    std::fs::create_dir_all(&cfg_root).expect("mkdir");
    let offline_dir = site.path("offline");
    std::fs::create_dir_all(&offline_dir).expect("mkdir");
    let systemd = Box_ {
        node: boot(
            "systemd",
            NspawnOptions {
                bind_ro: vec![(cfg_root.clone(), "/srv/cfg".into())],
                ..NspawnOptions::default()
            },
        ),
        name: "systemd",
    };
    let sysv = Box_ {
        node: boot(
            "sysv",
            NspawnOptions {
                init: Init::Sysv,
                bind_ro: vec![(cfg_root.clone(), "/srv/cfg".into())],
                ..NspawnOptions::default()
            },
        ),
        name: "sysv",
    };
    let offline = Box_ {
        node: boot(
            "offline",
            NspawnOptions {
                bind_ro: vec![
                    (cfg_root.clone(), "/srv/cfg".into()),
                    (offline_dir.clone(), "/srv/offline".into()),
                ],
                bind: vec![
                    (
                        PathBuf::from("/var/run/postgresql"),
                        "/run/postgresql".into(),
                    ),
                    (sockets.clone(), "/srv/redis".into()),
                ],
                private_network: true,
                ..NspawnOptions::default()
            },
        ),
        name: "offline",
    };

    // Each node's configuration, as `fleet installer config` writes it for the customer.
    let q = |v: &str| serde_json::Value::from(v).to_string();
    let offline_pg = format!(
        "postgres://postgres@localhost/{}?host=/run/postgresql",
        dbs[2].name
    );
    let inventory = format!(
        "defaults:\n  ssh:\n    user: fleet\ncustomers:\n  self:\n    mode: airgapped\n    clusters:\n\
         {c1}\
         {c2}\
         {c3}",
        c1 = cluster(
            "sd",
            &q(&dbs[0].url),
            &q(&redis.url),
            &q(&format!("{}sd:", redis.prefix)),
            "node-systemd",
            &format!("{}:8080", systemd.node.addr),
            &format!("{}:9464", systemd.node.addr)
        ),
        c2 = cluster(
            "sysv",
            &q(&dbs[1].url),
            &q(&redis.url),
            &q(&format!("{}sysv:", redis.prefix)),
            "node-sysv",
            &format!("{}:8080", sysv.node.addr),
            &format!("{}:9464", sysv.node.addr)
        ),
        c3 = cluster(
            "off",
            &q(&offline_pg),
            &q("unix:///srv/redis/redis.sock"),
            &q("fleet:"),
            "node-offline",
            "127.0.0.1:8080",
            "127.0.0.1:9464"
        ),
    );
    let inv = site.path("inventory.yaml");
    std::fs::write(&inv, inventory).expect("inventory");
    for node in ["node-systemd", "node-sysv", "node-offline"] {
        run_on(
            &s(&inv),
            &site.path("data"),
            &[
                "installer",
                "config",
                node,
                "--out",
                &s(&cfg_root.join(node)),
            ],
        )
        .ok();
    }

    diagnosed(&[&systemd, &sysv, &offline], || {
        let url = site.server.url();
        for b in [&systemd, &sysv] {
            // /tmp mounted noexec, as hardened hosts do: the script must not run code there.
            b.get("mountpoint -q /tmp || mount -t tmpfs tmpfs /tmp; mount -o remount,noexec /tmp && cp /bin/true /tmp/t && ! /tmp/t");
            // As a customer does: download the script to a file, then run it.
            b.get(&format!("curl -fsSLo /root/install.sh {url}/install.sh"));
        }
        first_install(&site, &systemd, &sysv);
        offline_install(&site, &offline);
        publish(&site, "1.1.0", &site.store, &site.trust);
        update(&systemd, &sysv);
        offline_update(&site, &offline);
        failures(&site, &systemd);
        uninstall(&systemd);
    });
}

/// One cluster of one node under a customer, for the inventory.
fn cluster(
    name: &str,
    pg: &str,
    redis: &str,
    prefix: &str,
    node: &str,
    listen: &str,
    metrics: &str,
) -> String {
    format!(
        "      {name}:\n        redis_url: {redis}\n        postgres_url: {pg}\n        shared_storage: {ROOT}/shared\n        rollout: {{ min_healthy_secs: 2, health_timeout_secs: 60 }}\n        vars: {{ redis_prefix: {prefix} }}\n        nodes:\n          - {{ name: {node}, host: 127.0.0.1, node_root: {ROOT}, vars: {{ listen: \"{listen}\", agent_metrics_listen: \"{metrics}\" }} }}\n"
    )
}

fn first_install(site: &Site, systemd: &Box_, sysv: &Box_) {
    // A dry run writes nothing; downloads go through the proxy the environment names (a
    // second server of the same folder, which sees the whole address asked for).
    let proxy = ReleaseServer::start(site.server.dir());
    let dry = systemd.sh(&format!(
        "http_proxy={} sh /root/install.sh --dry-run --config /srv/cfg/node-systemd",
        proxy.url()
    ));
    let through = format!("GET {}/latest ", site.server.url());
    assert!(
        proxy.requests().iter().any(|r| r.starts_with(&through)),
        "the proxy saw {:?}",
        proxy.requests()
    );
    assert!(
        dry.out.contains("would: install release 1.0.0"),
        "{}",
        dry.out
    );
    assert_eq!(dry.code, Some(0), "{}", dry.out);
    assert_eq!(
        systemd.sh(&format!("test -e {ROOT} || id fleet")).code,
        Some(1)
    );
    // Not root: refused with the command to use (no sudo on this system).
    let not_root = systemd.sh(
        "cp /root/install.sh /var/tmp/install.sh && chmod 644 /var/tmp/install.sh && su -s /bin/sh nobody -c 'sh /var/tmp/install.sh --config /srv/cfg/node-systemd'",
    );
    assert_eq!(not_root.code, Some(EXIT_NOT_ROOT), "{}", not_root.out);
    assert!(
        not_root.out.contains("must run as root")
            && not_root.out.contains("su -c \"sh /var/tmp/install.sh"),
        "{}",
        not_root.out
    );

    // A fresh install: active, enabled and healthy.
    let started = Instant::now();
    let out = systemd
        .sh("sh /root/install.sh --config /srv/cfg/node-systemd")
        .ok();
    eprintln!("systemd: installed in {:?}:\n{out}", started.elapsed());
    assert_eq!(
        systemd.get("systemctl is-active fleet-agent.service"),
        "active"
    );
    assert_eq!(
        systemd.get("systemctl is-enabled fleet-agent.service"),
        "enabled"
    );
    assert_eq!(systemd.get(&format!("stat -c %U {ROOT}/state")), "fleet");
    systemd.healthy("1.0.0");
    // The unit was rendered for this systemd: hardened, nothing left to fill in.
    let unit = systemd.get("cat /etc/systemd/system/fleet-agent.service");
    assert!(
        unit.contains("ProtectSystem=strict")
            && unit.contains("User=fleet")
            && !unit.contains("__FLEET_"),
        "{unit}"
    );
    assert!(
        systemd
            .get("systemd-analyze verify /etc/systemd/system/fleet-agent.service 2>&1; echo done")
            == "done"
    );

    // The same version again: nothing changes, nothing restarts.
    let (pid, server_pid) = (
        systemd.main_pid(),
        systemd.status()["daemon"]["server_pid"].clone(),
    );
    let again = systemd.sh("sh /root/install.sh").ok();
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(systemd.main_pid(), pid);
    assert_eq!(systemd.status()["daemon"]["server_pid"], server_pid);

    // A first install whose download is cut midway leaves nothing: no folder, no user.
    site.server.cut("fleet-agent-1.0.0-x86_64", true);
    let cut = sysv.sh("sh /root/install.sh --config /srv/cfg/node-sysv");
    assert_eq!(cut.code, Some(1), "{}", cut.out);
    assert!(cut.out.contains("fleet-agent-1.0.0-x86_64"), "{}", cut.out);
    assert_eq!(
        sysv.sh(&format!("test -e {ROOT} || id fleet")).code,
        Some(1)
    );
    site.server.cut("fleet-agent-1.0.0-x86_64", false);

    // SysV: installed, started at boot by its rc links, running.
    let out = sysv
        .sh("sh /root/install.sh --config /srv/cfg/node-sysv")
        .ok();
    eprintln!("sysv: installed:\n{out}");
    assert!(
        sysv.get("/etc/init.d/fleet-agent status")
            .contains("is running")
    );
    assert!(!sysv.get("ls /etc/rc2.d/ | grep fleet-agent").is_empty());
    assert_eq!(sysv.sh("test -d /run/systemd/system").code, Some(1));
    sysv.healthy("1.0.0");
}

fn update(systemd: &Box_, sysv: &Box_) {
    let (pid, server_pid) = (
        systemd.main_pid(),
        systemd.status()["daemon"]["server_pid"].clone(),
    );
    let restarts = systemd.get("systemctl show -p NRestarts --value fleet-agent.service");
    // The same saved script: re-running it updates to the newest release.
    let out = systemd.sh("sh /root/install.sh").ok();
    eprintln!("systemd: updated:\n{out}");
    systemd.healthy("1.1.0");
    assert_eq!(systemd.link("previous"), "1.0.0");
    // The agent kept its pid (no service restart); the server was restarted once, by the
    // upgrade step.
    assert_eq!(systemd.main_pid(), pid);
    assert_eq!(
        systemd.get("systemctl show -p NRestarts --value fleet-agent.service"),
        restarts
    );
    assert_ne!(systemd.status()["daemon"]["server_pid"], server_pid);

    let out = sysv.sh("sh /root/install.sh").ok();
    eprintln!("sysv: updated:\n{out}");
    sysv.healthy("1.1.0");
    assert_eq!(sysv.link("previous"), "1.0.0");
    assert!(
        sysv.get("/etc/init.d/fleet-agent status")
            .contains("is running")
    );
}

fn offline_install(site: &Site, offline: &Box_) {
    copy_offline(site, "1.0.0");
    // No network at all in here: only the container's own loopback.
    let links = offline.get("ls /sys/class/net");
    assert_eq!(links, "lo", "{links}");
    let out = offline
        .sh("mkdir -p /root/o && cd /root/o && tar xf /srv/offline/fleet-offline-1.0.0-x86_64.tar && sh fleet-offline-1.0.0-x86_64/install.sh --config /srv/cfg/node-offline")
        .ok();
    eprintln!("offline: installed:\n{out}");
    offline.healthy("1.0.0");
}

fn offline_update(site: &Site, offline: &Box_) {
    copy_offline(site, "1.1.0");
    let out = offline
        .sh("cd /root/o && tar xf /srv/offline/fleet-offline-1.1.0-x86_64.tar && sh fleet-offline-1.1.0-x86_64/install.sh")
        .ok();
    eprintln!("offline: updated:\n{out}");
    offline.healthy("1.1.0");
    assert_eq!(offline.link("previous"), "1.0.0");
}

/// Carries the offline bundle of `version` to the folder bound into the offline container.
fn copy_offline(site: &Site, version: &str) {
    let name = format!("fleet-offline-{version}-x86_64.tar");
    std::fs::copy(
        site.server.dir().join(&name),
        site.path("offline").join(&name),
    )
    .expect("offline bundle");
}

fn failures(site: &Site, systemd: &Box_) {
    let url = site.server.url();
    // A release whose server fails its health gate: rolled back, 1.1.0 serving again.
    publish(site, "1.2.0", &site.store, &site.trust);
    let failed = systemd.sh("sh /root/install.sh");
    assert_eq!(failed.code, Some(EXIT_ROLLED_BACK), "{}", failed.out);
    assert!(failed.out.contains("rolled back"), "{}", failed.out);
    systemd.healthy("1.1.0");

    // A script and a bundle made with another trust root: the node keeps the root it pinned
    // and refuses the bundle; nothing changes.
    let rogue = site.path("rogue");
    let rogue_trust = rogue.join("root.json");
    trust_root(&rogue.join("keys"), &rogue_trust);
    let bins = own_binaries().unwrap_or_else(|e| panic!("{e}"));
    release(
        "1.3.0",
        &bins,
        &rogue.join("keys/release.key"),
        &rogue.join("store"),
    );
    publish(site, "1.3.0", &rogue.join("store"), &rogue_trust);
    let pinned = systemd.get(&format!("sha256sum {ROOT}/trust/root.json"));
    let before = systemd.tree();
    let refused = systemd.sh(&format!(
        "curl -fsSLo /root/rogue.sh {url}/install.sh && sh /root/rogue.sh"
    ));
    assert_eq!(refused.code, Some(EXIT_VERIFY), "{}", refused.out);
    assert!(
        refused.out.contains("keeping the trust root pinned"),
        "{}",
        refused.out
    );
    assert_eq!(
        systemd.get(&format!("sha256sum {ROOT}/trust/root.json")),
        pinned
    );
    assert_eq!(systemd.tree(), before);
    systemd.healthy("1.1.0");

    // A download cut midway: nothing left behind.
    publish(site, "1.4.0", &site.store, &site.trust);
    site.server.cut("fleet-1.4.0.bundle", true);
    let cut = systemd.sh("sh /root/install.sh");
    assert_eq!(cut.code, Some(1), "{}", cut.out);
    assert!(
        cut.out.contains("downloading") && cut.out.contains("fleet-1.4.0.bundle"),
        "{}",
        cut.out
    );
    assert_eq!(systemd.tree(), before);
    assert_eq!(
        systemd.get(&format!("ls -A {ROOT} | grep -c install-work || true")),
        "0"
    );
    site.server.cut("fleet-1.4.0.bundle", false);

    // Two runs at once: the second is refused, naming the first's pid.
    site.server.hold("fleet-1.4.0.bundle", true);
    let asked = |s: &Site| {
        s.server
            .requests()
            .iter()
            .filter(|r| r.contains("/fleet-1.4.0.bundle"))
            .count()
    };
    let before_first = asked(site);
    let first = systemd.get("setsid sh -c 'sh /root/install.sh > /root/first.log 2>&1; echo $? > /root/first.rc' >/dev/null 2>&1 & echo $!");
    wait_for(|| asked(site) > before_first, "the first run's download");
    let holder = systemd.get(&format!("cat {ROOT}/.install.lock"));
    let second = systemd.sh("sh /root/install.sh");
    assert_eq!(second.code, Some(EXIT_LOCKED), "{}", second.out);
    assert!(
        second.out.contains(&format!("pid {holder}")),
        "{} (holder {holder}, started {first})",
        second.out
    );
    site.server.hold("fleet-1.4.0.bundle", false);
    wait_for(
        || systemd.sh("cat /root/first.rc").code == Some(0),
        "the first run's end",
    );
    assert_eq!(
        systemd.get("cat /root/first.rc"),
        "0",
        "{}",
        systemd.get("cat /root/first.log")
    );
    systemd.healthy("1.4.0");

    // SIGKILL in the middle of an update, then a run again: it converges.
    publish(site, "1.5.0", &site.store, &site.trust);
    let killed = systemd.get(
        "setsid sh -c 'sh /root/install.sh > /root/killed.log 2>&1' >/dev/null 2>&1 & echo $!",
    );
    wait_for(
        || {
            systemd
                .sh("grep -q 'activating release 1.5.0' /root/killed.log")
                .code
                == Some(0)
        },
        "the update's activation",
    );
    systemd.get(&format!("/bin/kill -KILL -- -{killed}"));
    let again = systemd.sh("sh /root/install.sh").ok();
    eprintln!("after SIGKILL, again:\n{again}");
    systemd.healthy("1.5.0");
    assert_eq!(systemd.link("previous"), "1.4.0");
    assert_eq!(
        systemd.get(&format!("ls -A {ROOT} | grep -c install-work || true")),
        "0"
    );

    // A downgrade is refused without --allow-downgrade.
    let down = systemd.sh("sh /root/install.sh --version 1.4.0");
    assert_eq!(down.code, Some(EXIT_DOWNGRADE), "{}", down.out);
    assert!(
        down.out.contains("older than the installed 1.5.0"),
        "{}",
        down.out
    );
    systemd.healthy("1.5.0");
}

fn uninstall(systemd: &Box_) {
    let out = systemd.sh("sh /root/install.sh --uninstall").ok();
    assert!(out.contains("kept"), "{out}");
    assert_ne!(
        systemd.sh("systemctl cat fleet-agent.service").code,
        Some(0)
    );
    for kept in ["config/agent.toml", "trust/root.json", "state"] {
        assert_eq!(
            systemd.sh(&format!("test -e {ROOT}/{kept}")).code,
            Some(0),
            "{kept}"
        );
    }
    for gone in ["releases", "current", "bin/fleet-agent"] {
        assert_eq!(
            systemd.sh(&format!("test -e {ROOT}/{gone}")).code,
            Some(1),
            "{gone}"
        );
    }
    let out = systemd.sh("sh /root/install.sh --uninstall --purge").ok();
    assert!(out.contains("removed"), "{out}");
    assert_eq!(systemd.sh(&format!("test -e {ROOT}")).code, Some(1));
    assert_ne!(systemd.sh("id fleet").code, Some(0));
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}
