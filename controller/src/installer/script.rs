//! `install.sh` for one release: `templates/install.sh.j2` rendered with the release's facts
//! and, as heredocs the script fills in on the host, the agent's service definitions (the
//! systemd unit still carrying its version marks, the SysV script, the upstart job) and the
//! trust root a first install pins.

use anyhow::{Result, bail};
use minijinja::context;

use crate::node::config::{UnitValues, annotated_unit, render};

const SCRIPT_TEMPLATE: (&str, &str) = (
    "install.sh.j2",
    include_str!("../../../templates/install.sh.j2"),
);
const SYSV_TEMPLATE: (&str, &str) = (
    "fleet-agent.sysv.j2",
    include_str!("../../../templates/fleet-agent.sysv.j2"),
);
const UPSTART_TEMPLATE: (&str, &str) = (
    "fleet-agent.upstart.j2",
    include_str!("../../../templates/fleet-agent.upstart.j2"),
);

/// The placeholders the script replaces on the host (its `--root`, `--user`, and the shared
/// storage its server.toml names); the script allows only plain characters in them.
pub const ROOT_PLACEHOLDER: &str = "__FLEET_ROOT__";
pub const USER_PLACEHOLDER: &str = "__FLEET_USER__";
pub const SHARED_PLACEHOLDER: &str = "__FLEET_SHARED__";

/// One release's facts, as the script carries them.
#[derive(Debug, Clone, Copy)]
pub struct Script<'a> {
    pub version: &'a str,
    pub platform: &'a str,
    pub agent_file: &'a str,
    pub agent_sha256: &'a str,
    /// Where the release files are downloaded from; empty for an offline bundle's script.
    pub url: &'a str,
    /// The trust root document, without a trailing newline.
    pub trust_root: &'a str,
}

/// Renders `install.sh` for `s`.
pub fn render_script(s: &Script<'_>) -> Result<String> {
    let unit = annotated_unit(&UnitValues {
        description: "Fleet node agent: supervises the ETL server",
        rendered_by: "the Fleet install script",
        user: USER_PLACEHOLDER,
        root: ROOT_PLACEHOLDER,
        shared_storage: SHARED_PLACEHOLDER,
        stop_secs: 60,
    })?;
    let ctx = context! { version => s.version };
    let sysv = render(SYSV_TEMPLATE.0, SYSV_TEMPLATE.1, ctx.clone())?;
    let upstart = render(UPSTART_TEMPLATE.0, UPSTART_TEMPLATE.1, ctx)?;
    for (what, text, end) in [
        ("the unit", &unit, "FLEET_UNIT_EOF"),
        ("the SysV script", &sysv, "FLEET_SYSV_EOF"),
        ("the upstart job", &upstart, "FLEET_UPSTART_EOF"),
        (
            "the trust root",
            &s.trust_root.to_owned(),
            "FLEET_TRUST_EOF",
        ),
    ] {
        // Each is a quoted heredoc in the script: it must not hold its end line.
        if text.lines().any(|l| l == end) {
            bail!("{what} holds the line {end}, which would end its heredoc in install.sh");
        }
    }
    let ctx = context! {
        version => s.version,
        platform => s.platform,
        agent_file => s.agent_file,
        agent_sha256 => s.agent_sha256,
        url => s.url.trim_end_matches('/'),
        unit => with_newline(unit),
        sysv => with_newline(sysv),
        upstart => with_newline(upstart),
        trust_root => s.trust_root,
    };
    Ok(render(SCRIPT_TEMPLATE.0, SCRIPT_TEMPLATE.1, ctx)?)
}

fn with_newline(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}
