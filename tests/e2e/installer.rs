//! `fleet installer build` and the script it writes, on this machine: the script is POSIX sh
//! that shellcheck, dash and bash accept, all code in functions; every supported
//! distribution's real `/etc/os-release` (tests/data/os-release, sources there) maps to its
//! family, package tool and init system, and unsupported ones are refused with their
//! os-release; the systemd unit it renders passes `systemd-analyze verify` without a word, and
//! the one for systemd 219 holds no key 219 does not know; the release folder and the offline
//! tar hold what they should. The script's lifecycle on real init systems is in
//! `install_nspawn.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{Tree, release_build, run, trust_root};

pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNSUPPORTED: i32 = 3;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Keys, a trust root and a store with release `version` of a small tree (shell scripts for
/// `bin/etl-server` and `bin/fleet-agent`) in `dir`; returns (store, root.json).
pub fn small_store(dir: &Path, versions: &[&str]) -> (PathBuf, PathBuf) {
    let keys = dir.join("keys");
    let root = dir.join("root.json");
    if !root.exists() {
        trust_root(&keys, &root);
    }
    let store = dir.join("store");
    for version in versions {
        let tree = dir.join(format!("tree-{version}"));
        std::fs::create_dir_all(tree.join("bin")).expect("tree");
        for bin in ["etl-server", "fleet-agent"] {
            let path = tree.join("bin").join(bin);
            std::fs::write(&path, format!("#!/bin/sh\necho {bin} {version}\n")).expect("bin");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        release_build(
            version,
            Tree::From(&tree),
            &keys.join("release.key"),
            &store,
        );
    }
    (store, root)
}

/// `fleet installer build VERSION` of a small release into `dir/www`, online (served at
/// `url`) and offline; returns the folder.
fn built(dir: &Path, url: &str) -> PathBuf {
    let (store, root) = small_store(dir, &["1.0.0"]);
    let www = dir.join("www");
    run(&[
        "installer",
        "build",
        "1.0.0",
        "--store",
        &s(&store),
        "--trust",
        &s(&root),
        "--out",
        &s(&www),
        "--url",
        url,
        "--offline",
    ])
    .ok();
    www
}

/// Runs `sh SCRIPT ARGS` with `env`.
fn sh(script: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("sh")
        .arg(script)
        .args(args)
        .env_remove("FLEET_OS_RELEASE")
        .env_remove("FLEET_SYSROOT")
        .env_remove("FLEET_SYSTEMD_VERSION")
        .envs(env.iter().copied())
        .output()
        .expect("sh runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tool(name: &str, args: &[&str], file: &Path) -> Output {
    Command::new(name)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!("{name}: {e} (apt-get install -y shellcheck dash; scripts/setup.sh does)")
        })
}

#[test]
fn the_script_is_posix_sh_that_shellcheck_dash_and_bash_accept_with_all_code_in_functions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let www = built(dir.path(), "https://releases.example.com/fleet");
    let script = www.join("install.sh");
    let body = std::fs::read_to_string(&script).expect("script");
    assert!(body.starts_with("#!/bin/sh\n"), "{body}");
    assert!(
        body.lines().last() == Some("main \"$@\""),
        "the last line must be main \"$@\""
    );
    // The SysV script the same script writes on a system without systemd or upstart.
    let sysroot = dir.path().join("sysroot");
    std::fs::create_dir_all(&sysroot).expect("sysroot");
    let sysv = dir.path().join("fleet-agent.init");
    let printed = sh(
        &script,
        &["--print-service", "--root", "/opt/fleet"],
        &[
            ("FLEET_OS_RELEASE", &s(&data("debian-12"))),
            ("FLEET_SYSROOT", &s(&sysroot)),
        ],
    );
    assert!(printed.status.success(), "{}", text(&printed));
    std::fs::write(&sysv, &printed.stdout).expect("init script");
    assert!(
        String::from_utf8_lossy(&printed.stdout).contains("### BEGIN INIT INFO"),
        "{}",
        text(&printed)
    );

    for file in [&script, &sysv] {
        for shell in ["sh", "dash"] {
            let out = tool(
                "shellcheck",
                &["--shell", shell, "--severity", "style"],
                file,
            );
            assert!(
                out.status.success() && out.stdout.is_empty(),
                "shellcheck --shell {shell} {}:\n{}",
                file.display(),
                text(&out)
            );
        }
        for shell in ["dash", "bash"] {
            let out = tool(shell, &["-n"], file);
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "{shell} -n {}: {}",
                file.display(),
                text(&out)
            );
        }
    }
    // The check can fail: a script with an error is reported.
    let broken = dir.path().join("broken.sh");
    std::fs::write(&broken, body.replace("main \"$@\"", "if main \"$@\"")).expect("broken");
    assert!(!tool("dash", &["-n"], &broken).status.success());

    // All code in functions: at the top level only comments, assignments, function
    // definitions and the last line.
    let mut depth = 0usize;
    let mut heredoc: Option<String> = None;
    for (n, line) in body.lines().enumerate() {
        if let Some(end) = &heredoc {
            if line == end {
                heredoc = None;
            }
            continue;
        }
        if let Some(i) = line.find("<<'") {
            let end = line[i + 3..].split('\'').next().unwrap_or_default();
            heredoc = Some(end.to_owned());
        } else if let Some(i) = line.find("<<EOF") {
            let _ = i;
            heredoc = Some("EOF".into());
        }
        let trimmed = line.trim();
        if depth == 0 {
            let ok = trimmed.is_empty()
                || trimmed.starts_with('#')
                || trimmed
                    .strip_suffix("() {")
                    .is_some_and(|name| !name.contains(' '))
                || trimmed.split_once('=').is_some_and(|(k, _)| {
                    !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                })
                || (n + 1 == body.lines().count() && trimmed == "main \"$@\"");
            assert!(ok, "install.sh:{}: code outside a function: {line}", n + 1);
        }
        if line.ends_with("() {") && !line.starts_with(' ') {
            depth += 1;
        } else if line == "}" {
            depth = depth.checked_sub(1).expect("balanced functions");
        }
    }
    assert_eq!(depth, 0);
}

/// The real os-release files kept as test data.
fn data(name: &str) -> PathBuf {
    crate::support::repo()
        .join("tests/data/os-release")
        .join(name)
}

/// A folder that looks like a system's root to the script's init detection.
fn sysroot(dir: &Path, init: &str) -> PathBuf {
    let root = dir.join(format!("sysroot-{init}"));
    match init {
        "systemd" => std::fs::create_dir_all(root.join("run/systemd/system")).expect("mkdir"),
        "upstart" => {
            std::fs::create_dir_all(root.join("etc/init")).expect("mkdir");
            std::fs::create_dir_all(root.join("sbin")).expect("mkdir");
            let initctl = root.join("sbin/initctl");
            std::fs::write(&initctl, "#!/bin/sh\n").expect("initctl");
            std::fs::set_permissions(&initctl, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        _ => std::fs::create_dir_all(&root).expect("mkdir"),
    }
    root
}

#[test]
fn every_supported_os_release_maps_to_its_family_package_tool_and_init_system() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = built(dir.path(), "https://releases.example.com").join("install.sh");
    // (file, family, package tool, the init system that distribution runs).
    let cases = [
        ("ubuntu-18.04", "debian", "apt-get", "systemd"),
        ("ubuntu-20.04", "debian", "apt-get", "systemd"),
        ("ubuntu-22.04", "debian", "apt-get", "systemd"),
        ("ubuntu-24.04", "debian", "apt-get", "systemd"),
        ("debian-10", "debian", "apt-get", "systemd"),
        ("debian-11", "debian", "apt-get", "systemd"),
        ("debian-12", "debian", "apt-get", "sysv"),
        ("amzn-2018.03", "rhel", "yum", "upstart"),
        ("amzn-2", "rhel", "yum", "systemd"),
        ("amzn-2023", "rhel", "dnf", "systemd"),
        ("centos-7", "rhel", "yum", "systemd"),
        ("rhel-7", "rhel", "yum", "systemd"),
        ("rhel-8", "rhel", "dnf", "systemd"),
        ("rhel-9", "rhel", "dnf", "systemd"),
        // Derivatives known by ID_LIKE only.
        ("rocky-9", "rhel", "dnf", "systemd"),
        ("almalinux-8", "rhel", "dnf", "systemd"),
        ("linuxmint-21", "debian", "apt-get", "systemd"),
    ];
    for (file, family, pkg, init) in cases {
        let root = sysroot(dir.path(), init);
        let out = sh(
            &script,
            &["--print-platform"],
            &[
                ("FLEET_OS_RELEASE", &s(&data(file))),
                ("FLEET_SYSROOT", &s(&root)),
            ],
        );
        let printed = text(&out);
        assert!(out.status.success(), "{file}: {printed}");
        for line in [
            format!("family: {family}\n"),
            format!("package tool: {pkg}\n"),
            format!("init system: {init}\n"),
        ] {
            assert!(
                printed.contains(&line),
                "{file}: want {line:?} in:\n{printed}"
            );
        }
    }
    // Amazon Linux 1 gets an upstart job, filled in for its root and user.
    let out = sh(
        &script,
        &["--print-service", "--root", "/srv/fleet", "--user", "etl"],
        &[
            ("FLEET_OS_RELEASE", &s(&data("amzn-2018.03"))),
            ("FLEET_SYSROOT", &s(&sysroot(dir.path(), "upstart"))),
        ],
    );
    let job = text(&out);
    assert!(out.status.success(), "{job}");
    assert!(
        job.contains("start on runlevel [2345]\n")
            && job.contains("respawn\n")
            && job.contains("-- etl /srv/fleet/bin/fleet-agent /srv/fleet\n")
            && !job.contains("__FLEET_"),
        "{job}"
    );
}

#[test]
fn unsupported_systems_are_refused_with_their_name_and_os_release() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = built(dir.path(), "https://releases.example.com").join("install.sh");
    let fedora_like = dir.path().join("fedora-like");
    std::fs::write(
        &fedora_like,
        "NAME=\"Nobara Linux\"\nID=nobara\nID_LIKE=\"fedora\"\nVERSION_ID=39\nPRETTY_NAME=\"Nobara Linux 39\"\n",
    )
    .expect("os-release");
    let old = dir.path().join("centos-6");
    std::fs::write(
        &old,
        "NAME=\"CentOS Linux\"\nID=\"centos\"\nID_LIKE=\"rhel fedora\"\nVERSION_ID=\"6\"\nPRETTY_NAME=\"CentOS 6\"\n",
    )
    .expect("os-release");
    let cases = [
        (data("alpine-3.19"), "Alpine Linux"),
        (data("opensuse-leap-15"), "openSUSE Leap 15"),
        (data("fedora-39"), "Fedora Linux 39"),
        (fedora_like, "Nobara Linux 39"),
        (old, "older than 7"),
        (dir.path().join("missing"), "cannot read"),
    ];
    for (file, name) in cases {
        for args in [&["--print-platform"][..], &["--dry-run"][..]] {
            let out = sh(&script, args, &[("FLEET_OS_RELEASE", &s(&file))]);
            let printed = text(&out);
            assert_eq!(
                out.status.code(),
                Some(EXIT_UNSUPPORTED),
                "{}: {printed}",
                file.display()
            );
            assert!(
                printed.contains("unsupported system") && printed.contains(name),
                "{}: {printed}",
                file.display()
            );
            if file.exists() {
                // Its os-release is shown.
                let first = std::fs::read_to_string(&file).expect("read");
                let first = first.lines().next().expect("a line");
                assert!(printed.contains(first), "{printed}");
            }
        }
    }
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = built(dir.path(), "https://releases.example.com").join("install.sh");
    for (args, says) in [
        (&["--frobnicate"][..], "unknown option: --frobnicate"),
        (&["--root", "opt/fleet"], "absolute"),
        (&["--root", "/opt/fle et"], "may hold only"),
        (&["--root", "/opt/$(reboot)"], "may hold only"),
        (&["--user", "root;id"], "plain user name"),
        (&["--purge"], "--purge goes with --uninstall"),
        (&["--root"], "--root needs"),
    ] {
        let out = sh(&script, args, &[]);
        assert_eq!(
            out.status.code(),
            Some(EXIT_USAGE),
            "{args:?}: {}",
            text(&out)
        );
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    let help = sh(&script, &["--help"], &[]);
    assert!(help.status.success());
    assert!(text(&help).contains("Exit codes"), "{}", text(&help));
}

/// The keys systemd 219 (CentOS 7, Amazon Linux 2) knows among those the unit could use:
/// from systemd v219's src/core/load-fragment-gperf.gperf.m4 (Unit, Service and Install
/// sections; values checked in namespace.c and kill.c of v219).
const KNOWN_TO_219: &[&str] = &[
    "Description",
    "After",
    "Wants",
    "Type",
    "User",
    "ExecStart",
    "Restart",
    "RestartSec",
    "StartLimitInterval",
    "KillMode",
    "TimeoutStopSec",
    "UMask",
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "SystemCallArchitectures",
    "RestrictAddressFamilies",
    "CapabilityBoundingSet",
    "WantedBy",
];

#[test]
fn the_unit_passes_systemd_analyze_verify_and_the_219_unit_has_no_newer_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = built(dir.path(), "https://releases.example.com").join("install.sh");
    // A node root with an executable agent: verify checks ExecStart's program.
    let root = dir.path().join("node");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::create_dir_all(root.join("config")).expect("mkdir");
    let agent = root.join("bin/fleet-agent");
    std::fs::write(&agent, "#!/bin/sh\n").expect("agent");
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(
        root.join("config/server.toml"),
        "shared_storage = \"/srv/etl-shared\"\n",
    )
    .expect("server.toml");
    let systemd = sysroot(dir.path(), "systemd");
    let unit_for = |version: &str| {
        let out = sh(
            &script,
            &["--print-service", "--root", &s(&root), "--user", "daemon"],
            &[
                ("FLEET_OS_RELEASE", &s(&data("debian-12"))),
                ("FLEET_SYSROOT", &s(&systemd)),
                ("FLEET_SYSTEMD_VERSION", version),
            ],
        );
        assert!(out.status.success(), "{version}: {}", text(&out));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let host = Command::new("systemctl")
        .arg("--version")
        .output()
        .expect("systemctl (package systemd)");
    let host = String::from_utf8_lossy(&host.stdout)
        .split_whitespace()
        .nth(1)
        .expect("systemd N")
        .to_owned();
    for version in [host.as_str(), "219"] {
        let unit = unit_for(version);
        assert!(!unit.contains('@') && !unit.contains("__FLEET_"), "{unit}");
        assert!(
            unit.contains(&format!(
                "ExecStart=\"{}/bin/fleet-agent\" run --root \"{}\"\n",
                root.display(),
                root.display()
            )) && unit.contains("User=daemon\n"),
            "{unit}"
        );
        let file = dir.path().join("fleet-agent.service");
        std::fs::write(&file, &unit).expect("unit");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .output()
            .expect("systemd-analyze (package systemd)");
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "systemd-analyze verify, the unit for systemd {version}: {}\n{unit}",
            text(&out)
        );
    }
    let newest = unit_for(&host);
    assert!(
        newest.contains("ProtectSystem=strict\n")
            && newest.contains("ReadWritePaths=")
            && newest.contains("\"-/srv/etl-shared\"")
            && newest.contains("StartLimitIntervalSec=0\n"),
        "{newest}"
    );
    let old = unit_for("219");
    for line in old.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let key = line.split('=').next().expect("a key");
        assert!(
            KNOWN_TO_219.contains(&key),
            "the unit for systemd 219 has {key}, which 219 does not know:\n{old}"
        );
    }
    assert!(
        old.contains("ProtectSystem=full\n") && old.contains("StartLimitInterval=0\n"),
        "{old}"
    );
}

#[test]
fn installer_build_writes_the_release_folder_and_the_offline_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, root) = small_store(dir.path(), &["1.0.0", "1.1.0"]);
    let www = dir.path().join("www");
    let build = |version: &str, extra: &[&str]| {
        let mut args = vec!["installer", "build", version, "--store"];
        let (store, root, www) = (s(&store), s(&root), s(&www));
        args.extend([store.as_str(), "--trust", &root, "--out", &www]);
        args.extend(extra);
        run(&args)
    };
    build(
        "1.1.0",
        &["--url", "https://r.example.com/fleet/", "--offline"],
    )
    .ok();
    let latest = std::fs::read_to_string(www.join("latest")).expect("latest");
    assert_eq!(latest, "1.1.0\n");
    let script = std::fs::read_to_string(www.join("install.sh")).expect("script");
    assert!(
        script.contains("FLEET_VERSION='1.1.0'\n")
            && script.contains("FLEET_URL='https://r.example.com/fleet'\n"),
        "{script}"
    );
    // An older release adds its files and leaves the newest's script and `latest`.
    let older = build("1.0.0", &["--url", "https://r.example.com/fleet"]).ok();
    assert!(older.stdout.contains("stays 1.1.0"), "{}", older.stdout);
    assert_eq!(
        std::fs::read_to_string(www.join("latest")).expect("latest"),
        "1.1.0\n"
    );
    assert!(
        std::fs::read_to_string(www.join("install.sh"))
            .expect("script")
            .contains("FLEET_VERSION='1.1.0'\n")
    );
    for name in [
        "fleet-1.0.0.bundle",
        "fleet-1.1.0.bundle",
        "fleet-agent-1.0.0-x86_64",
        "fleet-agent-1.1.0-x86_64",
        "fleet-offline-1.1.0-x86_64.tar",
    ] {
        assert!(www.join(name).is_file(), "{name}");
    }
    // SHA256SUMS covers the folder, as sha256sum -c reads it.
    let check = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&www)
        .output()
        .expect("sha256sum");
    assert!(check.status.success(), "{}", text(&check));
    let sums = std::fs::read_to_string(www.join("SHA256SUMS")).expect("sums");
    assert!(
        sums.contains("  install.sh\n") && sums.contains("  fleet-1.0.0.bundle\n"),
        "{sums}"
    );
    // The agent the script installs is the release's, and its sha256 is in the script.
    let agent = std::fs::read(www.join("fleet-agent-1.1.0-x86_64")).expect("agent");
    assert_eq!(agent, b"#!/bin/sh\necho fleet-agent 1.1.0\n");
    assert!(script.contains(&format!(
        "FLEET_AGENT_SHA256='{}'\n",
        fleet_tests::sha256_hex(&agent)
    )));

    // The offline tar: one folder with the script (no URL), the agent, the bundle and sums.
    let listing = Command::new("tar")
        .arg("tvf")
        .arg(www.join("fleet-offline-1.1.0-x86_64.tar"))
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    for name in [
        "install.sh",
        "fleet-agent-1.1.0-x86_64",
        "fleet-1.1.0.bundle",
        "SHA256SUMS",
    ] {
        assert!(
            listing.contains(&format!("fleet-offline-1.1.0-x86_64/{name}\n")),
            "{name}: {listing}"
        );
    }
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).expect("mkdir");
    let untar = Command::new("tar")
        .arg("xf")
        .arg(www.join("fleet-offline-1.1.0-x86_64.tar"))
        .current_dir(&unpacked)
        .output()
        .expect("tar");
    assert!(untar.status.success());
    let offline = unpacked.join("fleet-offline-1.1.0-x86_64");
    let check = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&offline)
        .output()
        .expect("sha256sum");
    assert!(check.status.success(), "{}", text(&check));
    let offline_script = std::fs::read_to_string(offline.join("install.sh")).expect("script");
    assert!(
        offline_script.contains("FLEET_URL=''\n"),
        "{offline_script}"
    );

    // A bundle that does not verify against the trust root given is refused, nothing written.
    let other = dir.path().join("other");
    let (_, other_root) = small_store(&other, &[]);
    let refused = run(&[
        "installer",
        "build",
        "1.1.0",
        "--store",
        &s(&store),
        "--trust",
        &s(&other_root),
        "--out",
        &s(&dir.path().join("www2")),
        "--offline",
    ]);
    assert_ne!(refused.code, Some(0));
    assert!(refused.stderr.contains("refused"), "{}", refused.stderr);
    assert!(
        std::fs::read_dir(dir.path().join("www2"))
            .map(|d| d
                .filter_map(Result::ok)
                .all(|e| e.file_name().to_string_lossy().starts_with('.')))
            .unwrap_or(true)
    );
    // Neither --url nor --offline, or an address with shell words: refused.
    let neither = build("1.1.0", &[]);
    assert!(
        neither.code != Some(0) && neither.stderr.contains("--url"),
        "{}",
        neither.stderr
    );
    let bad = build("1.1.0", &["--url", "https://x/$(reboot)"]);
    assert!(
        bad.code != Some(0) && bad.stderr.contains("does not belong"),
        "{}",
        bad.stderr
    );
}
