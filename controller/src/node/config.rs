//! Node config files: rendered from the templates in `templates/` (built into the binary) with
//! strict undefined, plus the secret files the configs point at. Not their transport: the
//! provisioning step writes them; and not secret storage: secrets are resolved here, when used,
//! and only ever written to files of mode 0600 on the node, never shown in a diff.

use fleet_inventory::{Cluster, Node};

use super::admin_token::ControllerKey;
use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, context};

/// The templates shipped with this controller: (name, file under the node root, source).
pub const TEMPLATES: [(&str, &str, &str); 2] = [
    (
        "agent.toml.j2",
        "config/agent.toml",
        include_str!("../../../templates/agent.toml.j2"),
    ),
    (
        "server.toml.j2",
        "config/server.toml",
        include_str!("../../../templates/server.toml.j2"),
    ),
];

/// The systemd unit of the agent: where provisioning installs it on a node that runs systemd.
pub const UNIT_PATH: &str = "/etc/systemd/system/fleet-agent.service";

/// The template of the agent's systemd unit.
const UNIT_TEMPLATE: (&str, &str) = (
    "fleet-agent.service.j2",
    include_str!("../../../templates/fleet-agent.service.j2"),
);

/// A file provisioning keeps on a node.
#[derive(Debug, Clone)]
pub struct NodeFile {
    /// Relative to the node root.
    pub path: String,
    pub mode: &'static str,
    pub content: String,
    /// A secret's content is never displayed; only whether it changed.
    pub secret: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("templates/{template}:{line}: {reason}")]
    Template {
        template: String,
        line: usize,
        reason: String,
    },
    #[error("{node}: cluster {customer}/{cluster} {setting}: {error}")]
    Secret {
        node: String,
        customer: String,
        cluster: String,
        setting: &'static str,
        error: String,
    },
}

/// Renders `source` as template `name` with strict undefined: a missing variable is an error
/// naming the template and line.
pub fn render(name: &str, source: &str, ctx: minijinja::Value) -> Result<String, ConfigError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.add_filter("systemd_quote", systemd_quote);
    env.add_filter("systemd_escape", systemd_escape);
    env.add_filter("shq", shell_quote);
    env.add_function("since", |v: u32| format!("@{v}@"));
    env.add_function("before", |v: u32| format!("@<{v}@"));
    let failed = |e: minijinja::Error| ConfigError::Template {
        template: name.to_owned(),
        line: e.line().unwrap_or(0),
        reason: e
            .detail()
            .map(str::to_owned)
            .unwrap_or_else(|| e.kind().to_string()),
    };
    env.add_template(name, source).map_err(failed)?;
    env.get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(failed)
}

/// A POSIX shell word: single-quoted, a single quote written as `'\''`; control characters
/// refused.
fn shell_quote(value: String) -> Result<String, minijinja::Error> {
    if value.chars().any(char::is_control) {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("{value:?} contains a control character"),
        ));
    }
    Ok(format!("'{}'", value.replace('\'', "'\\''")))
}

/// A unit file's word: `%` (a specifier) doubled, and nothing a unit file cannot hold.
fn systemd_escape(value: String) -> Result<String, minijinja::Error> {
    if value.chars().any(char::is_control) {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("{value:?} contains a control character, which a unit file cannot hold"),
        ));
    }
    Ok(value.replace('%', "%%"))
}

/// One argument of a unit file's command line or path list, double-quoted (backslashes and
/// double quotes escaped, `%` doubled), so spaces and quotes in a path stay one argument. A `$`
/// is refused: a command line would expand it, a path list would not.
fn systemd_quote(value: String) -> Result<String, minijinja::Error> {
    if value.contains('$') {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("{value:?} contains a `$`, which a unit file would expand"),
        ));
    }
    let escaped = systemd_escape(value)?
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    Ok(format!("\"{escaped}\""))
}

/// The agent's systemd unit for `node`, installed at [`UNIT_PATH`] where the node runs systemd,
/// for the newest systemd ([`unit_for_systemd`] with `None`).
pub fn agent_unit(node: &Node, cluster: &Cluster) -> Result<String, ConfigError> {
    let unit = annotated_unit(&UnitValues {
        description: &format!(
            "Fleet node agent for {} ({}/{}): supervises the ETL server",
            node.name, node.customer, node.cluster
        ),
        rendered_by: "`fleet provision`",
        user: &node.ssh.user,
        root: &node.node_root.to_string_lossy(),
        shared_storage: &cluster.shared_storage.to_string_lossy(),
        stop_secs: node
            .vars
            .get("stop_grace_secs")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(30)
            + 30,
    })?;
    Ok(unit_for_systemd(&unit, None))
}

/// What the agent's unit says about one node.
#[derive(Debug, Clone, Copy)]
pub struct UnitValues<'a> {
    pub description: &'a str,
    pub rendered_by: &'a str,
    pub user: &'a str,
    pub root: &'a str,
    pub shared_storage: &'a str,
    pub stop_secs: u64,
}

/// The agent's unit with each version-dependent line still marked: `@N@` (keep from systemd N
/// on) or `@<N@` (keep below N only). [`unit_for_systemd`] resolves the marks here; the
/// install script resolves them on the host, for the systemd it finds there.
pub fn annotated_unit(values: &UnitValues<'_>) -> Result<String, ConfigError> {
    let ctx = context! {
        description => values.description,
        rendered_by => values.rendered_by,
        user => values.user,
        root => values.root,
        shared_storage => values.shared_storage,
        stop_secs => values.stop_secs,
    };
    render(UNIT_TEMPLATE.0, UNIT_TEMPLATE.1, ctx)
}

/// `annotated` (see [`annotated_unit`]) for systemd `version`, or for the newest when `None`:
/// marked lines kept without their mark, or dropped.
pub fn unit_for_systemd(annotated: &str, version: Option<u32>) -> String {
    let mut out = String::with_capacity(annotated.len());
    for line in annotated.split_inclusive('\n') {
        let kept = match unit_mark(line) {
            None => Some(line),
            Some((below, n, rest)) => {
                let newer = version.is_none_or(|v| v >= n);
                (newer != below).then_some(rest)
            }
        };
        out.push_str(kept.unwrap_or(""));
    }
    out
}

/// A line's version mark: (is it `@<N@`, N, the rest of the line).
pub fn unit_mark(line: &str) -> Option<(bool, u32, &str)> {
    let tail = line.strip_prefix('@')?;
    let (below, tail) = match tail.strip_prefix('<') {
        Some(t) => (true, t),
        None => (false, tail),
    };
    let (n, rest) = tail.split_once('@')?;
    Some((below, n.parse().ok()?, rest))
}

/// Every file provisioning writes for `node` under its root: the rendered configs and the
/// secrets they name, the cluster's admin and cluster tokens (derived from the controller's
/// `key`) among them.
pub fn node_files(
    node: &Node,
    cluster: &Cluster,
    key: &ControllerKey,
) -> Result<Vec<NodeFile>, ConfigError> {
    let ctx = context! { node => Serde(node), cluster => Serde(cluster) };
    let mut files = Vec::new();
    for (name, path, source) in TEMPLATES {
        files.push(NodeFile {
            path: path.into(),
            mode: "644",
            content: render(name, source, ctx.clone())?,
            secret: false,
        });
    }
    for (setting, value) in [
        ("postgres_url", &cluster.postgres_url),
        ("redis_url", &cluster.redis_url),
    ] {
        let secret = value.resolve().map_err(|e| ConfigError::Secret {
            node: node.name.clone(),
            customer: cluster.customer.clone(),
            cluster: cluster.name.clone(),
            setting,
            error: e.to_string(),
        })?;
        files.push(NodeFile {
            path: format!("config/secrets/{setting}"),
            mode: "600",
            content: format!("{}\n", secret.expose()),
            secret: true,
        });
    }
    for (name, token) in [
        (
            "admin_token",
            key.admin_token(&cluster.customer, &cluster.name),
        ),
        (
            "cluster_token",
            key.cluster_token(&cluster.customer, &cluster.name),
        ),
    ] {
        files.push(NodeFile {
            path: format!("config/secrets/{name}"),
            mode: "600",
            content: format!("{token}\n"),
            secret: true,
        });
    }
    Ok(files)
}

/// A unified diff of `old` to `new` for `path`, for `provision --check`.
pub fn diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header(
            &format!("{path} (on the node)"),
            &format!("{path} (rendered)"),
        )
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn acme() -> fleet_inventory::Inventory {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventory/examples/acme.yaml"),
        )
        .expect("example");
        fleet_inventory::Inventory::from_str(&text, Path::new("/etc/fleet/acme.yaml"))
            .expect("valid")
    }

    #[test]
    fn renders_the_expected_text() {
        let inv = acme();
        let node = &inv.nodes()[1];
        let cluster = inv.cluster_of(node).expect("cluster");
        let ctx = context! { node => Serde(node), cluster => Serde(cluster) };
        let (name, _, source) = TEMPLATES[1];
        assert_eq!(
            render(name, source, ctx).expect("renders"),
            "# etl-server configuration for acme-prod-2.\n\
             # Rendered by `fleet provision` from templates/server.toml.j2: edits here are overwritten.\n\
             node = \"acme-prod-2\"\n\
             listen = \"127.0.0.1:8080\"\n\
             shared_storage = \"/mnt/efs/etl\"\n\
             load_balancing = \"round_robin\"\n\
             weight = 1\n\
             postgres_url_file = \"/opt/etl/config/secrets/postgres_url\"\n\
             redis_url_file = \"/opt/etl/config/secrets/redis_url\"\n\
             redis_prefix = \"fleet:\"\n\
             admin_token_file = \"/opt/etl/config/secrets/admin_token\"\n\
             cluster_token_file = \"/opt/etl/config/secrets/cluster_token\"\n\
             \n\
             [limits]\n\
             max_running_flows = 4\n"
        );
    }

    #[test]
    fn a_shared_clusters_tenants_are_written_into_the_server_config() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventory/examples/acme.yaml"),
        )
        .expect("example")
        .replace("mode: customer_managed", "mode: shared")
        .replace(
            "        nodes:",
            "        tenants: [globex, { name: initech, max_running_flows: 2 }]\n        nodes:",
        );
        let inv = fleet_inventory::Inventory::from_str(&text, Path::new("/etc/fleet/acme.yaml"))
            .expect("valid");
        let node = &inv.nodes()[0];
        let cluster = inv.cluster_of(node).expect("cluster");
        let ctx = context! { node => Serde(node), cluster => Serde(cluster) };
        let (name, _, source) = TEMPLATES[1];
        let rendered = render(name, source, ctx).expect("renders");
        assert!(
            rendered.ends_with(
                "max_running_flows = 4\n\n\
                 # A tenant of this shared cluster (the inventory's `tenants`).\n\
                 [tenants.\"globex\"]\n\n\
                 # A tenant of this shared cluster (the inventory's `tenants`).\n\
                 [tenants.\"initech\"]\n\
                 max_running_flows = 2\n"
            ),
            "{rendered}"
        );
    }

    #[test]
    fn the_agent_config_names_what_the_daemon_reads() {
        let inv = acme();
        let node = &inv.nodes()[0];
        let cluster = inv.cluster_of(node).expect("cluster");
        let ctx = context! { node => Serde(node), cluster => Serde(cluster) };
        let (name, _, source) = TEMPLATES[0];
        assert_eq!(
            render(name, source, ctx).expect("renders"),
            "# fleet-agent configuration for acme-prod-1.\n\
             # Rendered by `fleet provision` from templates/agent.toml.j2: edits here are overwritten.\n\
             node = \"acme-prod-1\"\n\
             customer = \"acme\"\n\
             cluster = \"prod\"\n\
             node_root = \"/opt/etl\"\n\
             trust_root = \"/opt/etl/trust/root.json\"\n\
             redis_url_file = \"/opt/etl/config/secrets/redis_url\"\n\
             server_config = \"/opt/etl/config/server.toml\"\n\
             metrics_listen = \"127.0.0.1:9464\"\n\
             \n\
             [rollout]\n\
             max_unavailable = 1\n\
             min_healthy_secs = 10\n\
             health_timeout_secs = 120\n\
             \n\
             [supervise]\n\
             stop_grace_secs = 30\n\
             drain_deadline_secs = 300\n"
        );
    }

    /// An inventory of one node rooted at `root`, with `vars` (YAML flow mapping).
    fn one_node(root: &Path, vars: &str) -> fleet_inventory::Inventory {
        let text = format!(
            "defaults:\n  ssh: {{ user: etl, known_hosts: ./known_hosts }}\n  node_root: {root:?}\n  vars: {vars}\n\
             customers:\n  acme:\n    mode: customer_managed\n    clusters:\n      prod:\n\
             \x20       redis_url: redis://127.0.0.1:6379/0\n        postgres_url: postgres://127.0.0.1/etl\n\
             \x20       shared_storage: /srv/etl shared\n        nodes:\n          - {{ name: n1, host: 127.0.0.1 }}\n",
            root = root.display().to_string(),
        );
        fleet_inventory::Inventory::from_str(&text, Path::new("/etc/fleet/one.yaml"))
            .unwrap_or_else(|e| panic!("valid: {e}\n{text}"))
    }

    #[test]
    fn vars_override_the_defaults_and_a_null_prefix_keeps_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inv = one_node(
            dir.path(),
            "{ stop_grace_secs: 5, drain_deadline_secs: 60, agent_metrics_listen: \"127.0.0.1:9999\", redis_prefix: null }",
        );
        let node = &inv.nodes()[0];
        let cluster = inv.cluster_of(node).expect("cluster");
        let key = ControllerKey::load_or_create(&dir.path().join("controller.key")).expect("key");
        let files = node_files(node, cluster, &key).expect("files");
        let agent = &files[0].content;
        assert!(
            agent.contains("metrics_listen = \"127.0.0.1:9999\"\n")
                && agent.contains("stop_grace_secs = 5\n")
                && agent.contains("drain_deadline_secs = 60\n"),
            "{agent}"
        );
        assert!(
            files[1].content.contains("redis_prefix = \"fleet:\"\n"),
            "{}",
            files[1].content
        );
        let unit = agent_unit(node, cluster).expect("unit");
        assert!(unit.contains("TimeoutStopSec=35\n"), "{unit}");
        // The admin token: a secret of the cluster, the same on every run.
        let token = files
            .iter()
            .find(|f| f.path == "config/secrets/admin_token")
            .expect("admin token");
        assert!(token.secret && token.mode == "600");
        assert_eq!(
            token.content,
            format!("{}\n", key.admin_token("acme", "prod"))
        );
        let again = node_files(node, cluster, &key).expect("files");
        assert_eq!(again.len(), files.len());
        assert!(
            again
                .iter()
                .zip(&files)
                .all(|(a, b)| a.content == b.content)
        );
    }

    /// The unit passes `systemd-analyze verify` without a word: it exits 0 on warnings, so any
    /// output fails the test. The node root has a space (quoting) and an executable agent
    /// (verify checks `ExecStart`'s program).
    #[test]
    fn the_agent_unit_passes_systemd_analyze_verify_silently() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("node root");
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        let agent = root.join("bin/fleet-agent");
        std::fs::write(&agent, "#!/bin/sh\nexit 0\n").expect("agent");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let inv = one_node(&root, "{}");
        let node = &inv.nodes()[0];
        let cluster = inv.cluster_of(node).expect("cluster");
        let unit = agent_unit(node, cluster).expect("unit");
        let quoted = format!("\"{}\"", root.display());
        assert!(
            unit.contains(&format!(
                "\nExecStart={} run --root {quoted}\n",
                format_args!("\"{}/bin/fleet-agent\"", root.display())
            )) && unit.contains(&format!("\nReadWritePaths={quoted} \"-/srv/etl shared\"\n")),
            "{unit}"
        );
        for line in [
            "Restart=always",
            "KillMode=mixed",
            "TimeoutStopSec=60",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "User=etl",
        ] {
            assert!(unit.contains(&format!("\n{line}\n")), "{line}: {unit}");
        }
        let file = dir.path().join("fleet-agent.service");
        std::fs::write(&file, &unit).expect("unit file");
        let out = match std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .current_dir(dir.path())
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "systemd-analyze is missing: install the systemd package (apt-get install -y systemd)"
            ),
            Err(e) => panic!("running systemd-analyze: {e}"),
        };
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && stdout.is_empty() && stderr.is_empty(),
            "systemd-analyze verify {}: {}\nstdout: {stdout}\nstderr: {stderr}\n{unit}",
            file.display(),
            out.status
        );
        // The check itself can fail: an agent that is not executable is reported.
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .current_dir(dir.path())
            .output()
            .expect("runs");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not executable"),
            "{out:?}"
        );
    }

    #[test]
    fn unit_words_are_quoted_and_what_a_unit_cannot_hold_is_refused() {
        assert_eq!(
            systemd_quote("/opt/a b/\"x\"\\100%".into()).expect("quoted"),
            "\"/opt/a b/\\\"x\\\"\\\\100%%\""
        );
        let err = systemd_quote("/opt/$HOME".into()).expect_err("refused");
        assert!(err.to_string().contains("a `$`"), "{err}");
        let err = systemd_escape("a\nExecStartPre=/bin/sh".into()).expect_err("refused");
        assert!(err.to_string().contains("control character"), "{err}");
    }

    #[test]
    fn a_missing_variable_names_the_template_and_line() {
        let err = render(
            "broken.j2",
            "a = 1\nb = {{ node.nope }}\n",
            context! { node => context! { name => "n" } },
        )
        .expect_err("strict undefined");
        let text = err.to_string();
        assert!(text.starts_with("templates/broken.j2:2: "), "{text}");
    }

    #[test]
    fn secrets_are_resolved_only_into_secret_files() {
        let inv = acme();
        let node = &inv.nodes()[0];
        let cluster = inv.cluster_of(node).expect("cluster");
        let dir = tempfile::tempdir().expect("tempdir");
        let key = ControllerKey::load_or_create(&dir.path().join("controller.key")).expect("key");
        // postgres_url is `env:ACME_PG_URL`, which is not set here: a clear error, no value.
        match node_files(node, cluster, &key) {
            Err(ConfigError::Secret {
                setting: "postgres_url",
                error,
                ..
            }) => assert!(error.contains("ACME_PG_URL"), "{error}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn diffs_show_what_changes() {
        let d = diff("config/server.toml", "a = 1\nb = 2\n", "a = 1\nb = 3\n");
        assert!(d.contains("-b = 2\n+b = 3\n"), "{d}");
    }
}
