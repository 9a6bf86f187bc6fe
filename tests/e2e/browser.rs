//! The dashboard in a real browser: `tests/browser/dashboard.mjs` drives Debian's chromium
//! (headless, through playwright-core) against `fleet serve` on a real 3-node cluster run by
//! its agents: log in, see the fleet, a deep link, a rollout started by an operator whose
//! every node's progress changes on the page without a reload, a viewer without buttons whom
//! the API refuses, and axe-core on every page. Screenshots are kept in the test's output
//! folder (`target/tmp/browser-screenshots/`). `scripts/setup.sh` installs chromium and the
//! script's npm packages; without them this test fails saying so.

use std::path::Path;
use std::process::Command;

use fleet_tests::Provisioned;

use super::serve::{add_user, serve_provisioned};

#[test]
fn the_dashboard_in_a_real_browser() {
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "no /usr/bin/chromium: run scripts/setup.sh (apt-get install chromium)"
    );
    assert!(
        script_dir.join("node_modules/playwright-core").exists()
            && script_dir.join("node_modules/axe-core").exists(),
        "no playwright-core or axe-core in tests/browser/node_modules: run scripts/setup.sh (npm ci in tests/browser)"
    );
    let mut c = Provisioned::start(Path::new(env!("CARGO_BIN_EXE_fleet")), "e2e_browser", 3);
    for v in ["1.0.0", "1.1.0"] {
        c.build_release(v);
    }
    c.activate("1.0.0");
    c.with_logs(|c| browser_scenario(c, &script_dir));
}

fn browser_scenario(c: &mut Provisioned, script_dir: &Path) {
    let (operator, viewer) = ("an operator password", "a viewer password here");
    add_user(c, "op", "operator", operator);
    add_user(c, "watcher", "viewer", viewer);
    let admin = "an admin password here";
    add_user(c, "boss", "admin", admin);
    let served = serve_provisioned(c);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-screenshots");
    let nodes: Vec<String> = c.fleet.nodes().iter().map(|n| n.name.clone()).collect();
    let out = Command::new("node")
        .arg(script_dir.join("dashboard.mjs"))
        .current_dir(script_dir)
        .env("FLEET_URL", format!("http://{}", served.addr))
        .env("SHOTS_DIR", &shots)
        .env("ROLLOUT_VERSION", "1.1.0")
        .env("NODES", nodes.join(","))
        .env("OPERATOR_USER", "op")
        .env("OPERATOR_PASSWORD", operator)
        .env("VIEWER_USER", "watcher")
        .env("VIEWER_PASSWORD", viewer)
        .env("ADMIN_USER", "boss")
        .env("ADMIN_PASSWORD", admin)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().last().unwrap_or_default();
    let seen: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("the browser script printed no result ({e}):\n{stdout}\n{stderr}")
    });
    assert!(
        out.status.success() && seen["ok"] == true,
        "in the browser: {}\nscreenshots in {}\n{stderr}",
        seen,
        shots.display()
    );
    eprintln!("browser: {seen}\nscreenshots in {}", shots.display());
    for page in [
        "overview",
        "cluster",
        "node",
        "deep-link",
        "rollout",
        "rollout-as-viewer",
        "releases",
        "audit",
        "users",
    ] {
        let png = shots.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            png.display()
        );
    }
    for k in 0..3 {
        assert_eq!(c.serving(k), "1.1.0");
    }
}
