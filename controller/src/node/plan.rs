//! Provisioning as data: what a provisioned node holds (the layout's directories,
//! `bin/fleet-agent`, `trust/root.json`, the config files and their secrets, the deploy key's
//! line, and where systemd runs, the agent's unit enabled and started), the shell text of the probe that finds out what it holds, the plan of changes that
//! follows from the probe, and the exact shell text of every step. Pure: nothing here opens a
//! connection; `provision` runs the steps over one SSH session.

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::config::{NodeFile, UNIT_PATH};
use super::shell::{remote_path, sh_quote, sh_word};

/// The node layout's directories, made sure of before any write.
pub const DIRS: [&str; 8] = [
    "releases",
    "config",
    "config/secrets",
    "trust",
    "state",
    "chunks",
    "logs",
    "bin",
];

/// The pinned trust root, relative to the node root.
const TRUST_ROOT: &str = "trust/root.json";

/// The agent's systemd service.
const SERVICE: &str = "fleet-agent.service";

/// Shell text that sets `$r` to what runs a command as root: nothing for root, else `sudo -n`
/// (which fails at once rather than asking for a password).
const AS_ROOT: &str = "r=$([ \"$(id -u)\" = 0 ] || echo sudo -n)";

/// A file provisioning keeps on the node, with how to show a change to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed<'a> {
    /// Relative to the node root, or absolute (the systemd unit).
    pub path: String,
    pub mode: &'a str,
    pub bytes: &'a [u8],
    pub show: Show,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Binary or opaque: only its size.
    Size,
    /// Text: a diff under `--check`.
    Diff,
    /// Never displayed.
    Secret,
}

/// One shell command for a node: its exact text, what it reads on stdin, and what to say
/// when it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<'a> {
    pub script: String,
    pub input: Option<&'a [u8]>,
    pub context: Option<String>,
}

impl Step<'_> {
    fn new(script: String) -> Self {
        Self {
            script,
            input: None,
            context: None,
        }
    }

    fn context(self, context: impl Into<String>) -> Self {
        Self {
            context: Some(context.into()),
            ..self
        }
    }
}

/// What a provisioned node holds.
#[derive(Debug, Clone)]
pub struct Desired<'a> {
    root: String,
    files: Vec<Managed<'a>>,
    /// As the inventory gives it: it may start with `~/`.
    authorized_keys: String,
    /// The authorized_keys line of the deploy key, restricted to the agent.
    key_line: String,
    /// The deploy key's base64 blob: any other line with it must go.
    key_blob: String,
    /// The agent's systemd unit, at [`UNIT_PATH`], where the node runs systemd.
    unit: Managed<'a>,
}

/// Whether the node runs systemd, and the agent's service there, as probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Systemd {
    /// `/run/systemd/system` is missing: the node's init system must start the agent.
    Absent,
    /// `fleet-agent.service` is enabled and active.
    Running,
    /// Systemd runs, but the service is not both enabled and active.
    Stopped,
}

/// What the probe found on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Per managed file, in order: its sha256, `-` when absent, or `unreadable`.
    sums: Vec<String>,
    /// The same of the systemd unit.
    unit_sum: String,
    systemd: Systemd,
    /// Our exact deploy key line is the only line for that key.
    key_present: bool,
    /// Layout directories that do not exist.
    missing: Vec<String>,
}

/// One difference between the node and [`Desired`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<'a> {
    CreateDirs(Vec<String>),
    Write(Managed<'a>),
    AuthorizeKey,
    /// Write the systemd unit, reload systemd, enable the service and start it, or restart it
    /// when it `replaces` a unit that was there.
    InstallUnit {
        replaces: bool,
    },
    /// The unit is as rendered but the service is not enabled and running: enable and start it.
    StartAgent,
    /// The unit is as rendered and the service runs, but a file it reads was written (its
    /// binary, its config, a secret): restart it so it runs what was installed.
    RestartAgent,
}

/// The changes a probe implies, in the order they are reported and applied.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    desired: &'a Desired<'a>,
    changes: Vec<Change<'a>>,
    systemd: Systemd,
}

impl<'a> Desired<'a> {
    /// The state for a node rooted at `root`: `agent` as `bin/fleet-agent`, `root_json` as the
    /// pinned trust root, the rendered `files`, the `deploy_key` allowed to run the agent
    /// only, in `authorized_keys`, and where the node runs systemd, the agent's `unit`.
    pub fn new(
        root: &str,
        authorized_keys: &str,
        deploy_key: &DeployKey,
        agent: &'a [u8],
        root_json: &'a [u8],
        files: &'a [NodeFile],
        unit: &'a str,
    ) -> anyhow::Result<Self> {
        let mut managed = vec![
            Managed {
                path: "bin/fleet-agent".into(),
                mode: "755",
                bytes: agent,
                show: Show::Size,
            },
            Managed {
                path: TRUST_ROOT.into(),
                mode: "644",
                bytes: root_json,
                show: Show::Diff,
            },
        ];
        managed.extend(files.iter().map(|f| Managed {
            path: f.path.clone(),
            mode: f.mode,
            bytes: f.content.as_bytes(),
            show: if f.secret { Show::Secret } else { Show::Diff },
        }));
        Ok(Self {
            root: root.to_owned(),
            files: managed,
            authorized_keys: authorized_keys.to_owned(),
            key_line: key_line(root, deploy_key)?,
            key_blob: deploy_key.blob().to_owned(),
            unit: Managed {
                path: UNIT_PATH.into(),
                mode: "644",
                bytes: unit.as_bytes(),
                show: Show::Diff,
            },
        })
    }

    fn full(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{}/{path}", self.root)
        }
    }

    /// The command that runs the agent's daemon, as an init system would run it.
    pub fn agent_command(&self) -> String {
        format!(
            "{} run --root {}",
            sh_word(&self.full("bin/fleet-agent")),
            sh_word(&self.root)
        )
    }

    /// Prints one line per managed file, whatever happens to it, the systemd unit's last,
    /// then whether systemd runs there (`/run/systemd/system`) and the agent's service is
    /// enabled and active, then the key's state, then what is missing. The key counts as
    /// present only if our exact line is the key's only line: sshd uses the first line for a
    /// key, so any other (an unrestricted one) must go.
    pub fn probe(&self) -> Step<'static> {
        let paths: Vec<String> = self
            .files
            .iter()
            .chain([&self.unit])
            .map(|m| sh_quote(&self.full(&m.path)))
            .collect();
        Step::new(format!(
            "for f in {paths}; do if [ -f \"$f\" ]; then s=$(sha256sum < \"$f\" 2>/dev/null | cut -d' ' -f1); echo \"${{s:-unreadable}}\"; else echo -; fi; done; \
             if [ -d /run/systemd/system ]; then if systemctl is-enabled --quiet {SERVICE} 2>/dev/null && systemctl is-active --quiet {SERVICE} 2>/dev/null; then echo systemd running; else echo systemd stopped; fi; else echo no systemd; fi; \
             if [ -f {ak} ] && grep -qxF {line} {ak} && [ \"$(grep -cF {blob} {ak})\" = 1 ]; then echo present; else echo absent; fi; \
             for d in {dirs}; do [ -d {r}/\"$d\" ] || echo \"missing $d\"; done",
            paths = paths.join(" "),
            ak = remote_path(&self.authorized_keys),
            line = sh_quote(&self.key_line),
            blob = sh_quote(&self.key_blob),
            dirs = DIRS.join(" "),
            r = sh_quote(&self.root),
        ))
        .context("probing the node")
    }

    /// Reads what the probe printed.
    pub fn read_probe(&self, out: &str) -> anyhow::Result<Probe> {
        let lines: Vec<&str> = out.lines().collect();
        if lines.len() < self.files.len() + 3 {
            bail!("unexpected probe output: {out:?}");
        }
        let (sums, rest) = lines.split_at(self.files.len());
        let systemd = match rest[1] {
            "no systemd" => Systemd::Absent,
            "systemd running" => Systemd::Running,
            "systemd stopped" => Systemd::Stopped,
            _ => bail!("unexpected probe output: {out:?}"),
        };
        Ok(Probe {
            sums: sums.iter().map(|s| (*s).to_owned()).collect(),
            unit_sum: rest[0].to_owned(),
            systemd,
            key_present: rest[2] == "present",
            missing: rest[3..]
                .iter()
                .filter_map(|l| l.strip_prefix("missing "))
                .map(str::to_owned)
                .collect(),
        })
    }

    /// When the node pins another trust root than the one offered, the step that reads it:
    /// a node that pins a root accepts only that root again or its valid successor, so a
    /// wrong `--trust` file must not re-root the fleet.
    pub fn pinned_root_read(&self, probe: &Probe) -> Option<Step<'static>> {
        let at = self.files.iter().position(|m| m.path == TRUST_ROOT)?;
        let sum = probe.sums.get(at)?;
        (sum != "-" && *sum != sha256(self.files[at].bytes)).then(|| {
            Step::new(format!("cat {}", sh_quote(&self.full(TRUST_ROOT))))
                .context("reading the node's pinned root")
        })
    }

    /// Refuses an offered root that is neither the `pinned` one nor its valid successor.
    pub fn check_successor(&self, pinned: &[u8]) -> anyhow::Result<()> {
        let offered = self
            .files
            .iter()
            .find(|m| m.path == TRUST_ROOT)
            .map(|m| m.bytes)
            .unwrap_or_default();
        let pinned =
            fleet_release::Root::parse(pinned).context("the node's pinned trust/root.json")?;
        let offered = fleet_release::Root::parse(offered)?;
        if pinned.body() != offered.body() {
            pinned.verify_successor(&offered).with_context(|| {
                format!("the node pins root version {}; the given root is not its successor (rotate with `fleet trust rotate`)", pinned.body().version)
            })?;
        }
        Ok(())
    }

    /// What differs between the node, as probed, and this state.
    pub fn plan(&'a self, probe: &Probe) -> Plan<'a> {
        let mut changes = Vec::new();
        if !probe.missing.is_empty() {
            changes.push(Change::CreateDirs(probe.missing.clone()));
        }
        changes.extend(
            self.files
                .iter()
                .zip(&probe.sums)
                .filter(|(m, sum)| **sum != sha256(m.bytes))
                .map(|(m, _)| Change::Write(m.clone())),
        );
        if !probe.key_present {
            changes.push(Change::AuthorizeKey);
        }
        // Last: the service starts with every file it reads in place.
        let wrote = changes.iter().any(|c| matches!(c, Change::Write(_)));
        match probe.systemd {
            Systemd::Absent => {}
            _ if probe.unit_sum != sha256(self.unit.bytes) => changes.push(Change::InstallUnit {
                replaces: probe.unit_sum != "-",
            }),
            Systemd::Stopped => changes.push(Change::StartAgent),
            Systemd::Running if wrote => changes.push(Change::RestartAgent),
            Systemd::Running => {}
        }
        Plan {
            desired: self,
            changes,
            systemd: probe.systemd,
        }
    }
}

impl<'a> Plan<'a> {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// What the operator must do that provisioning does not: on a node without systemd, start
    /// the agent's daemon with the node's init system (the exact command).
    pub fn notes(&self) -> Vec<String> {
        match self.systemd {
            Systemd::Absent => vec![format!(
                "no systemd on the node (/run/systemd/system is missing), so no unit was installed: the node's init system must start the agent: {}",
                self.desired.agent_command()
            )],
            Systemd::Running | Systemd::Stopped => Vec::new(),
        }
    }

    /// One line per change, as the report shows them.
    pub fn describe(&self) -> Vec<String> {
        let d = self.desired;
        self.changes
            .iter()
            .map(|change| match change {
                Change::CreateDirs(dirs) => format!("create {} under {}", dirs.join(", "), d.root),
                Change::Write(m) => match m.show {
                    Show::Size => format!("install {} ({} bytes)", m.path, m.bytes.len()),
                    Show::Diff => format!("write {}", m.path),
                    Show::Secret => format!("write {} (secret, not shown)", m.path),
                },
                Change::AuthorizeKey => format!(
                    "authorize the deploy key for the agent only in {}",
                    d.authorized_keys
                ),
                Change::InstallUnit { replaces: false } => {
                    format!("install {UNIT_PATH}, enable and start {SERVICE}")
                }
                Change::InstallUnit { replaces: true } => {
                    format!("update {UNIT_PATH} and restart {SERVICE}")
                }
                Change::StartAgent => format!("enable and start {SERVICE}"),
                Change::RestartAgent => {
                    format!("restart {SERVICE} (a file it reads changed)")
                }
            })
            .collect()
    }

    /// For `--check`: each changed file that may be shown, with the step that reads its text
    /// on the node (empty when it does not exist).
    pub fn diff_reads(&self) -> Vec<(&Managed<'a>, Step<'static>)> {
        self.changes
            .iter()
            .filter_map(|change| match change {
                Change::Write(m) if m.show == Show::Diff => Some(m),
                Change::InstallUnit { .. } => Some(&self.desired.unit),
                _ => None,
            })
            .map(|m| {
                (
                    m,
                    Step::new(format!(
                        "cat {} 2>/dev/null || true",
                        sh_quote(&self.desired.full(&m.path))
                    )),
                )
            })
            .collect()
    }

    /// The steps that bring the node to the desired state, in order: the layout's directories
    /// (idempotent, so made sure of whenever anything changes), each file written atomically
    /// (temporary name, then rename), then the deploy key's line, then the systemd unit
    /// (written as root the same way, then the service enabled and started, or restarted when
    /// its unit changed). None when nothing changes.
    pub fn steps(&self) -> Vec<Step<'a>> {
        if self.changes.is_empty() {
            return Vec::new();
        }
        let d = self.desired;
        let r = sh_quote(&d.root);
        let dirs: Vec<String> = DIRS.iter().map(|dir| format!("{r}/{dir}")).collect();
        let mut steps = vec![Step::new(format!(
            "mkdir -p {} && chmod 700 {r}/state {r}/config/secrets",
            dirs.join(" ")
        ))];
        for change in &self.changes {
            match change {
                Change::CreateDirs(_) => {}
                Change::Write(m) => {
                    let path = d.full(&m.path);
                    let (p, tmp) = (sh_quote(&path), sh_quote(&format!("{path}.new")));
                    steps.push(Step {
                        script: format!(
                            "cat > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {p}",
                            mode = m.mode
                        ),
                        input: Some(m.bytes),
                        context: Some(format!("installing {path}")),
                    });
                }
                Change::AuthorizeKey => steps.push(Step::new(format!(
                    "mkdir -p \"$(dirname {ak})\" && touch {ak} && {{ grep -vF {blob} {ak} || true; printf '%s\\n' {line}; }} > {ak}.new && chmod 600 {ak}.new && mv -f {ak}.new {ak}",
                    ak = remote_path(&d.authorized_keys),
                    line = sh_quote(&d.key_line),
                    blob = sh_quote(&d.key_blob)
                ))),
                Change::InstallUnit { replaces } => {
                    let (p, tmp) = (sh_quote(UNIT_PATH), sh_quote(&format!("{UNIT_PATH}.new")));
                    let write = format!(
                        "cat > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {p}",
                        mode = d.unit.mode
                    );
                    let start = if *replaces {
                        format!("$r systemctl enable {SERVICE} && $r systemctl restart {SERVICE}")
                    } else {
                        format!("$r systemctl enable --now {SERVICE}")
                    };
                    steps.push(Step {
                        script: format!(
                            "{AS_ROOT}; $r sh -c {write} && $r systemctl daemon-reload && {start}",
                            write = sh_quote(&write)
                        ),
                        input: Some(d.unit.bytes),
                        context: Some(format!("installing {UNIT_PATH}")),
                    });
                }
                Change::StartAgent => steps.push(
                    Step::new(format!("{AS_ROOT}; $r systemctl enable --now {SERVICE}"))
                        .context(format!("starting {SERVICE}")),
                ),
                Change::RestartAgent => steps.push(
                    Step::new(format!("{AS_ROOT}; $r systemctl restart {SERVICE}"))
                        .context(format!("restarting {SERVICE}")),
                ),
            }
        }
        steps
    }
}

/// A deploy key's public half as OpenSSH encodes a key it parsed, `type base64`: nothing else
/// of the text it came from (a comment, options, another line) can reach `authorized_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployKey(String);

impl DeployKey {
    /// Reads `type base64 [comment]`; the comment is dropped.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut key = russh::keys::ssh_key::PublicKey::from_openssh(text.trim())
            .map_err(|e| anyhow::anyhow!("not an OpenSSH public key: {e}"))?;
        key.set_comment("");
        let line = key
            .to_openssh()
            .map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))?;
        Ok(Self(line))
    }

    /// The base64 blob, which names the key in `authorized_keys`.
    pub fn blob(&self) -> &str {
        self.0.split(' ').nth(1).unwrap_or_default()
    }
}

/// The authorized_keys line that lets the deploy `key` run the agent of the node rooted at
/// `root` and nothing else. It is built only from the parsed key and a root without control
/// characters (the inventory refuses those too): a newline there would start a line of its
/// own, with no restriction.
pub fn key_line(root: &str, key: &DeployKey) -> anyhow::Result<String> {
    if root.chars().any(char::is_control) {
        bail!(
            "node_root {root:?} contains a control character, which cannot go into authorized_keys"
        );
    }
    let agent = format!("{root}/bin/fleet-agent");
    let command = format!("{} --root {} serve", sh_quote(&agent), sh_quote(root));
    Ok(format!(
        "restrict,command=\"{}\" {} fleet-deploy",
        command.replace('"', "\\\""),
        key.0
    ))
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOY_PUB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIINBR0KmRMh+mCFPsj01U4RLHayp2uIVC9tmO7KgdkTp";
    const AGENT: &[u8] = b"\x7fELF agent";
    const ROOT_JSON: &[u8] = b"{\"signed\":{}}\n";
    const UNIT: &str = "[Service]\nExecStart=/opt/etl/bin/fleet-agent run --root /opt/etl\n";

    fn files() -> Vec<NodeFile> {
        vec![
            NodeFile {
                path: "config/server.toml".into(),
                mode: "644",
                content: "node = \"n1\"\nmax_running_flows = 4\n".into(),
                secret: false,
            },
            NodeFile {
                path: "config/secrets/postgres_url".into(),
                mode: "600",
                content: "postgres://u:pw@db/etl\n".into(),
                secret: true,
            },
        ]
    }

    fn deploy_key() -> DeployKey {
        DeployKey::parse(&format!("{DEPLOY_PUB} ops@laptop")).expect("a key")
    }

    fn desired(files: &[NodeFile]) -> Desired<'_> {
        Desired::new(
            "/opt/etl",
            "~/.ssh/authorized_keys",
            &deploy_key(),
            AGENT,
            ROOT_JSON,
            files,
            UNIT,
        )
        .expect("desired")
    }

    /// What the probe prints for a node without systemd holding `sums` (one per managed file).
    fn probe_output(sums: &[String], key: &str, missing: &[&str]) -> String {
        systemd_output(sums, "-", "no systemd", key, missing)
    }

    /// What the probe prints for a node holding `sums`, the unit `unit_sum` and `systemd`.
    fn systemd_output(
        sums: &[String],
        unit_sum: &str,
        systemd: &str,
        key: &str,
        missing: &[&str],
    ) -> String {
        let mut lines: Vec<String> = sums.to_vec();
        lines.push(unit_sum.to_owned());
        lines.push(systemd.to_owned());
        lines.push(key.to_owned());
        lines.extend(missing.iter().map(|d| format!("missing {d}")));
        lines.join("\n") + "\n"
    }

    /// The sums of a node that holds exactly what `files` say.
    fn current(files: &[NodeFile]) -> Vec<String> {
        let mut sums = vec![sha256(AGENT), sha256(ROOT_JSON)];
        sums.extend(files.iter().map(|f| sha256(f.content.as_bytes())));
        sums
    }

    const KEY_LINE: &str = r#"restrict,command="'/opt/etl/bin/fleet-agent' --root '/opt/etl' serve" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIINBR0KmRMh+mCFPsj01U4RLHayp2uIVC9tmO7KgdkTp fleet-deploy"#;
    const MKDIRS: &str = "mkdir -p '/opt/etl'/releases '/opt/etl'/config '/opt/etl'/config/secrets '/opt/etl'/trust '/opt/etl'/state '/opt/etl'/chunks '/opt/etl'/logs '/opt/etl'/bin && chmod 700 '/opt/etl'/state '/opt/etl'/config/secrets";

    fn install(path: &str, mode: &str, bytes: &'static [u8]) -> Step<'static> {
        let full = format!("/opt/etl/{path}");
        Step {
            script: format!(
                "cat > '{full}.new' && chmod {mode} '{full}.new' && mv -f '{full}.new' '{full}'"
            ),
            input: Some(bytes),
            context: Some(format!("installing {full}")),
        }
    }

    #[test]
    fn the_deploy_key_line_is_built_from_validated_parts_only() {
        // The comment and anything after the key never reach the line.
        let key = DeployKey::parse(&format!(
            "{DEPLOY_PUB} ops\ncommand=\"sh\" ssh-ed25519 AAAA other"
        ))
        .expect("the first key");
        assert_eq!(key, deploy_key());
        assert_eq!(key_line("/opt/etl", &key).expect("line"), KEY_LINE);
        let err = DeployKey::parse("ssh-ed25519 AAAAnotakey").expect_err("not a key");
        assert!(
            err.to_string().starts_with("not an OpenSSH public key"),
            "{err}"
        );
        // A newline in the root would start an unrestricted line of its own.
        let err = key_line(&format!("/opt/etl\n{DEPLOY_PUB} "), &key).expect_err("refused");
        assert!(
            err.to_string().contains("contains a control character"),
            "{err}"
        );
        let err = Desired::new(
            "/opt\retl",
            "~/.ssh/authorized_keys",
            &key,
            AGENT,
            ROOT_JSON,
            &[],
            UNIT,
        )
        .expect_err("refused");
        assert!(err.to_string().contains("control character"), "{err}");
    }

    #[test]
    fn the_probe_and_the_deploy_key_line() {
        let files = files();
        let d = desired(&files);
        assert_eq!(key_line("/opt/etl", &deploy_key()).expect("line"), KEY_LINE);
        assert_eq!(
            d.probe(),
            Step {
                script: concat!(
                    r#"for f in '/opt/etl/bin/fleet-agent' '/opt/etl/trust/root.json' '/opt/etl/config/server.toml' '/opt/etl/config/secrets/postgres_url' "#,
                    r#"'/etc/systemd/system/fleet-agent.service'; "#,
                    r#"do if [ -f "$f" ]; then s=$(sha256sum < "$f" 2>/dev/null | cut -d' ' -f1); echo "${s:-unreadable}"; else echo -; fi; done; "#,
                    r#"if [ -d /run/systemd/system ]; then if systemctl is-enabled --quiet fleet-agent.service 2>/dev/null && systemctl is-active --quiet fleet-agent.service 2>/dev/null; "#,
                    r#"then echo systemd running; else echo systemd stopped; fi; else echo no systemd; fi; "#,
                    r#"if [ -f "$HOME"/'.ssh/authorized_keys' ] && grep -qxF 'restrict,command="'\''/opt/etl/bin/fleet-agent'\'' --root '\''/opt/etl'\'' serve" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIINBR0KmRMh+mCFPsj01U4RLHayp2uIVC9tmO7KgdkTp fleet-deploy' "$HOME"/'.ssh/authorized_keys' "#,
                    r#"&& [ "$(grep -cF 'AAAAC3NzaC1lZDI1NTE5AAAAIINBR0KmRMh+mCFPsj01U4RLHayp2uIVC9tmO7KgdkTp' "$HOME"/'.ssh/authorized_keys')" = 1 ]; then echo present; else echo absent; fi; "#,
                    r#"for d in releases config config/secrets trust state chunks logs bin; do [ -d '/opt/etl'/"$d" ] || echo "missing $d"; done"#,
                )
                .into(),
                input: None,
                context: Some("probing the node".into()),
            }
        );
        let err = d.read_probe("-\n-\n").expect_err("too short");
        assert!(err.to_string().contains("unexpected probe output"), "{err}");
        let sums = vec!["-".to_owned(); 4];
        let err = d
            .read_probe(&systemd_output(&sums, "-", "upstart", "absent", &[]))
            .expect_err("no such systemd state");
        assert!(err.to_string().contains("unexpected probe output"), "{err}");
    }

    #[test]
    fn a_fresh_node_gets_everything() {
        let files = files();
        let d = desired(&files);
        let none = vec!["-".to_owned(); 4];
        let probe = d
            .read_probe(&probe_output(&none, "absent", &DIRS))
            .expect("probe");
        assert_eq!(d.pinned_root_read(&probe), None, "nothing pinned yet");
        let plan = d.plan(&probe);
        // No systemd: no unit, and the report says how the agent must be started instead.
        assert_eq!(
            plan.notes(),
            [
                "no systemd on the node (/run/systemd/system is missing), so no unit was installed: the node's init system must start the agent: /opt/etl/bin/fleet-agent run --root /opt/etl"
            ]
        );
        assert_eq!(
            plan.describe(),
            [
                "create releases, config, config/secrets, trust, state, chunks, logs, bin under /opt/etl",
                "install bin/fleet-agent (10 bytes)",
                "write trust/root.json",
                "write config/server.toml",
                "write config/secrets/postgres_url (secret, not shown)",
                "authorize the deploy key for the agent only in ~/.ssh/authorized_keys",
            ]
        );
        let server: &'static [u8] = b"node = \"n1\"\nmax_running_flows = 4\n";
        let secret: &'static [u8] = b"postgres://u:pw@db/etl\n";
        assert_eq!(
            plan.steps(),
            [
                Step {
                    script: MKDIRS.into(),
                    input: None,
                    context: None,
                },
                install("bin/fleet-agent", "755", AGENT),
                install("trust/root.json", "644", ROOT_JSON),
                install("config/server.toml", "644", server),
                install("config/secrets/postgres_url", "600", secret),
                Step {
                    script: concat!(
                        r#"mkdir -p "$(dirname "$HOME"/'.ssh/authorized_keys')" && touch "$HOME"/'.ssh/authorized_keys' && "#,
                        r#"{ grep -vF 'AAAAC3NzaC1lZDI1NTE5AAAAIINBR0KmRMh+mCFPsj01U4RLHayp2uIVC9tmO7KgdkTp' "$HOME"/'.ssh/authorized_keys' || true; "#,
                        r#"printf '%s\n' 'restrict,command="'\''/opt/etl/bin/fleet-agent'\'' --root '\''/opt/etl'\'' serve" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIINBR0KmRMh+mCFPsj01U4RLHayp2uIVC9tmO7KgdkTp fleet-deploy'; } "#,
                        r#"> "$HOME"/'.ssh/authorized_keys'.new && chmod 600 "$HOME"/'.ssh/authorized_keys'.new && mv -f "$HOME"/'.ssh/authorized_keys'.new "$HOME"/'.ssh/authorized_keys'"#,
                    )
                    .into(),
                    input: None,
                    context: None,
                },
            ]
        );
        // Under --check, the files shown as diffs are read (the secret never is).
        let reads: Vec<(String, String)> = plan
            .diff_reads()
            .into_iter()
            .map(|(m, step)| (m.path.clone(), step.script))
            .collect();
        assert_eq!(
            reads,
            [
                (
                    "trust/root.json".to_owned(),
                    "cat '/opt/etl/trust/root.json' 2>/dev/null || true".to_owned()
                ),
                (
                    "config/server.toml".to_owned(),
                    "cat '/opt/etl/config/server.toml' 2>/dev/null || true".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn an_unchanged_node_is_left_alone() {
        let files = files();
        let d = desired(&files);
        let probe = d
            .read_probe(&probe_output(&current(&files), "present", &[]))
            .expect("probe");
        assert_eq!(d.pinned_root_read(&probe), None);
        let plan = d.plan(&probe);
        assert!(plan.is_empty());
        assert_eq!(plan.describe(), Vec::<String>::new());
        assert_eq!(plan.steps(), []);
        assert_eq!(plan.diff_reads(), []);
    }

    const AS_ROOT_TEXT: &str = r#"r=$([ "$(id -u)" = 0 ] || echo sudo -n); "#;
    const WRITE_UNIT: &str = r#"$r sh -c 'cat > '\''/etc/systemd/system/fleet-agent.service.new'\'' && chmod 644 '\''/etc/systemd/system/fleet-agent.service.new'\'' && mv -f '\''/etc/systemd/system/fleet-agent.service.new'\'' '\''/etc/systemd/system/fleet-agent.service'\''' && $r systemctl daemon-reload && "#;

    #[test]
    fn under_systemd_the_unit_is_installed_enabled_and_started_last() {
        let files = files();
        let d = desired(&files);
        let none = vec!["-".to_owned(); 4];
        let probe = d
            .read_probe(&systemd_output(
                &none,
                "-",
                "systemd stopped",
                "absent",
                &DIRS,
            ))
            .expect("probe");
        let plan = d.plan(&probe);
        assert_eq!(plan.notes(), Vec::<String>::new());
        let described = plan.describe();
        assert_eq!(
            described.last().map(String::as_str),
            Some(
                "install /etc/systemd/system/fleet-agent.service, enable and start fleet-agent.service"
            ),
            "{described:?}"
        );
        let steps = plan.steps();
        assert_eq!(steps.len(), 7, "{steps:#?}");
        assert_eq!(
            steps[6],
            Step {
                script: format!(
                    "{AS_ROOT_TEXT}{WRITE_UNIT}$r systemctl enable --now fleet-agent.service"
                ),
                input: Some(UNIT.as_bytes()),
                context: Some("installing /etc/systemd/system/fleet-agent.service".into()),
            }
        );
        // --check shows the unit as a diff, read where it is installed.
        let reads: Vec<String> = plan
            .diff_reads()
            .into_iter()
            .map(|(_, step)| step.script)
            .collect();
        assert_eq!(
            reads.last().map(String::as_str),
            Some("cat '/etc/systemd/system/fleet-agent.service' 2>/dev/null || true")
        );

        // Installed and running: nothing to do, and a second run writes nothing.
        let probe = d
            .read_probe(&systemd_output(
                &current(&files),
                &sha256(UNIT.as_bytes()),
                "systemd running",
                "present",
                &[],
            ))
            .expect("probe");
        let plan = d.plan(&probe);
        assert!(plan.is_empty());
        assert_eq!(plan.steps(), []);
        assert_eq!(plan.notes(), Vec::<String>::new());
    }

    #[test]
    fn under_systemd_a_changed_unit_restarts_and_a_stopped_service_starts() {
        let files = files();
        let d = desired(&files);
        let probe = d
            .read_probe(&systemd_output(
                &current(&files),
                &sha256(b"an older unit"),
                "systemd running",
                "present",
                &[],
            ))
            .expect("probe");
        let plan = d.plan(&probe);
        assert_eq!(
            plan.describe(),
            ["update /etc/systemd/system/fleet-agent.service and restart fleet-agent.service"]
        );
        assert_eq!(
            plan.steps(),
            [
                Step {
                    script: MKDIRS.into(),
                    input: None,
                    context: None,
                },
                Step {
                    script: format!(
                        "{AS_ROOT_TEXT}{WRITE_UNIT}$r systemctl enable fleet-agent.service && $r systemctl restart fleet-agent.service"
                    ),
                    input: Some(UNIT.as_bytes()),
                    context: Some("installing /etc/systemd/system/fleet-agent.service".into()),
                },
            ]
        );

        // The unit as rendered, the service stopped or disabled: enabled and started.
        let probe = d
            .read_probe(&systemd_output(
                &current(&files),
                &sha256(UNIT.as_bytes()),
                "systemd stopped",
                "present",
                &[],
            ))
            .expect("probe");
        let plan = d.plan(&probe);
        assert_eq!(plan.describe(), ["enable and start fleet-agent.service"]);
        assert_eq!(plan.diff_reads(), []);
        assert_eq!(
            plan.steps(),
            [
                Step {
                    script: MKDIRS.into(),
                    input: None,
                    context: None,
                },
                Step {
                    script: format!("{AS_ROOT_TEXT}$r systemctl enable --now fleet-agent.service"),
                    input: None,
                    context: Some("starting fleet-agent.service".into()),
                },
            ]
        );
    }

    /// The unit unchanged and the service running, but a file it reads rewritten (here the
    /// server's config): the file first, then the service restarted so it runs what was
    /// installed; nothing rewritten, nothing restarted.
    #[test]
    fn under_systemd_a_rewritten_file_restarts_the_running_agent() {
        let files = files();
        let d = desired(&files);
        let mut sums = current(&files);
        sums[2] = sha256(b"node = \"n1\"\nmax_running_flows = 2\n");
        let probe = d
            .read_probe(&systemd_output(
                &sums,
                &sha256(UNIT.as_bytes()),
                "systemd running",
                "present",
                &[],
            ))
            .expect("probe");
        let plan = d.plan(&probe);
        assert_eq!(
            plan.describe(),
            [
                "write config/server.toml",
                "restart fleet-agent.service (a file it reads changed)"
            ]
        );
        let steps = plan.steps();
        assert_eq!(
            steps.last(),
            Some(&Step {
                script: format!("{AS_ROOT_TEXT}$r systemctl restart fleet-agent.service"),
                input: None,
                context: Some("restarting fleet-agent.service".into()),
            })
        );
        let unchanged = d
            .read_probe(&systemd_output(
                &current(&files),
                &sha256(UNIT.as_bytes()),
                "systemd running",
                "present",
                &[],
            ))
            .expect("probe");
        assert!(d.plan(&unchanged).is_empty());
    }

    #[test]
    fn without_systemd_no_unit_is_written_and_the_command_is_quoted_when_it_must_be() {
        let files = files();
        let d = desired(&files);
        // Even a unit left over on the node: without systemd running, it is not touched.
        let probe = d
            .read_probe(&systemd_output(
                &current(&files),
                &sha256(b"an older unit"),
                "no systemd",
                "present",
                &[],
            ))
            .expect("probe");
        let plan = d.plan(&probe);
        assert!(plan.is_empty());
        assert_eq!(plan.notes().len(), 1);
        let odd = Desired::new(
            "/srv/node one",
            "~/.ssh/authorized_keys",
            &deploy_key(),
            AGENT,
            ROOT_JSON,
            &files,
            UNIT,
        )
        .expect("desired");
        assert_eq!(
            odd.agent_command(),
            "'/srv/node one/bin/fleet-agent' run --root '/srv/node one'"
        );
    }

    #[test]
    fn a_changed_config_writes_only_that_file() {
        let before = files();
        let mut after = files();
        after[0].content = "node = \"n1\"\nmax_running_flows = 8\n".into();
        let d = desired(&after);
        let probe = d
            .read_probe(&probe_output(&current(&before), "present", &[]))
            .expect("probe");
        let plan = d.plan(&probe);
        assert_eq!(
            plan.changes,
            [Change::Write(Managed {
                path: "config/server.toml".into(),
                mode: "644",
                bytes: b"node = \"n1\"\nmax_running_flows = 8\n",
                show: Show::Diff,
            })]
        );
        assert_eq!(plan.describe(), ["write config/server.toml"]);
        assert_eq!(
            plan.steps(),
            [
                Step {
                    script: MKDIRS.into(),
                    input: None,
                    context: None,
                },
                install(
                    "config/server.toml",
                    "644",
                    b"node = \"n1\"\nmax_running_flows = 8\n"
                ),
            ]
        );
        assert_eq!(plan.diff_reads().len(), 1);
    }

    #[test]
    fn a_changed_secret_is_written_but_never_shown() {
        let before = files();
        let mut after = files();
        after[1].content = "postgres://u:new@db/etl\n".into();
        let d = desired(&after);
        let probe = d
            .read_probe(&probe_output(&current(&before), "present", &[]))
            .expect("probe");
        let plan = d.plan(&probe);
        assert_eq!(
            plan.describe(),
            ["write config/secrets/postgres_url (secret, not shown)"]
        );
        assert_eq!(plan.diff_reads(), []);
        assert_eq!(plan.steps().len(), 2);
    }

    #[test]
    fn another_pinned_root_is_read_before_anything_is_planned() {
        let files = files();
        let d = desired(&files);
        let mut sums = current(&files);
        sums[1] = sha256(b"another root");
        let probe = d
            .read_probe(&probe_output(&sums, "present", &["logs"]))
            .expect("probe");
        assert_eq!(
            d.pinned_root_read(&probe),
            Some(Step {
                script: "cat '/opt/etl/trust/root.json'".into(),
                input: None,
                context: Some("reading the node's pinned root".into()),
            })
        );
        let plan = d.plan(&probe);
        assert_eq!(
            plan.describe(),
            ["create logs under /opt/etl", "write trust/root.json"]
        );
        let err = d.check_successor(b"not json").expect_err("refused");
        assert!(
            format!("{err:#}").contains("the node's pinned trust/root.json"),
            "{err:#}"
        );
    }
}
