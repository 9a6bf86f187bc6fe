//! Node config files: rendered from the templates in `templates/` (built into the binary) with
//! strict undefined, plus the secret files the configs point at. Not their transport: the
//! provisioning step writes them; and not secret storage: secrets are resolved here, when used,
//! and only ever written to files of mode 0600 on the node, never shown in a diff.

use fleet_inventory::{Cluster, Node};
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

/// Every file provisioning writes for `node`: the rendered configs and the secrets they name.
pub fn node_files(node: &Node, cluster: &Cluster) -> Result<Vec<NodeFile>, ConfigError> {
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
             \n\
             [limits]\n\
             max_running_flows = 4\n"
        );
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
        // postgres_url is `env:ACME_PG_URL`, which is not set here: a clear error, no value.
        match node_files(node, cluster) {
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
