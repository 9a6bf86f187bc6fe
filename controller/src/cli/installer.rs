//! `fleet installer build` and `fleet installer config`: the command line over
//! `crate::installer` and the node config renderer provisioning uses.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::args::InstallerCommand;
use super::commands::load_inventory;
use super::report::{Failure, Report};
use crate::installer::{self, BuildRequest};
use crate::node;

pub fn installer(command: InstallerCommand) -> Result<Report, Failure> {
    match command {
        InstallerCommand::Build {
            version,
            store,
            trust,
            out,
            url,
            offline,
        } => {
            let built = installer::build(&BuildRequest {
                version,
                store,
                trust,
                out: out.clone(),
                url: url.clone(),
                offline,
            })?;
            let mut lines = vec![format!(
                "release {} ({}), agent sha256 {}: wrote {} into {}",
                built.version,
                built.platform,
                built.agent_sha256,
                built.files.join(", "),
                out.display()
            )];
            if let Some(url) = &url {
                lines.push(format!(
                    "serve {} at {url}; customers install and update with: curl -fsSLo install.sh {}/install.sh && sudo sh install.sh",
                    out.display(),
                    url.trim_end_matches('/')
                ));
                if built.latest != built.version {
                    lines.push(format!(
                        "the folder's newest release stays {} (its install.sh and latest are kept)",
                        built.latest
                    ));
                }
            }
            if let Some(tar) = &built.offline {
                lines.push(format!(
                    "offline bundle: {} (tar xf it on the node, then sudo sh {}/install.sh)",
                    tar.display(),
                    installer::offline_name(
                        &built.version,
                        built.platform.trim_start_matches("linux-")
                    )
                ));
            }
            Ok(Report::new(
                lines.join("\n"),
                json!({ "ok": true, "out": out, "url": url, "built": built }),
            ))
        }
        InstallerCommand::Config {
            node: name,
            inventory,
            out,
        } => {
            let inv = load_inventory(&inventory)?;
            let node = inv
                .nodes()
                .iter()
                .find(|n| n.name == name)
                .with_context(|| format!("{}: no node named {name}", inventory.display()))?;
            let cluster = inv
                .cluster_of(node)
                .expect("a loaded inventory places every node in a cluster");
            let key = node::ControllerKey::load_or_create_default().map_err(anyhow::Error::from)?;
            let files = node::node_files(node, cluster, &key).map_err(anyhow::Error::from)?;
            let written = write_config(&out, &files)?;
            Ok(Report::new(
                format!(
                    "wrote the configuration of {name} ({} files, node root {}) into {}: install.sh --config {} --root {}",
                    written.len(),
                    node.node_root.display(),
                    out.display(),
                    out.display(),
                    node.node_root.display()
                ),
                json!({ "ok": true, "node": name, "out": out, "files": written, "node_root": node.node_root }),
            ))
        }
    }
}

/// Writes `files` (paths under `config/`) into `out` without `config/`, each created new:
/// secrets with mode 0600, in a folder only the owner reads.
fn write_config(out: &std::path::Path, files: &[node::config::NodeFile]) -> Result<Vec<String>> {
    if out.exists()
        && fs::read_dir(out)
            .with_context(|| format!("{}", out.display()))?
            .next()
            .is_some()
    {
        bail!("{}: not empty (it is never overwritten)", out.display());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out.join("secrets"))
        .with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for file in files {
        let rel = file
            .path
            .strip_prefix("config/")
            .with_context(|| format!("{} is not a config file", file.path))?;
        let mode = u32::from_str_radix(file.mode, 8).unwrap_or(0o600);
        let path = out.join(rel);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        std::io::Write::write_all(&mut f, file.content.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(rel.to_owned());
    }
    Ok(written)
}
