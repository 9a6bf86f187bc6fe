//! Host key enrolment (`fleet hosts trust`): the one explicit step that records node host
//! keys in known_hosts. Not a connection path: nothing else ever adds a key.

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use super::known_hosts::{self, KnownHosts, Verdict};
use super::transport::{self, Target};

/// What enrolment did for one node.
#[derive(Debug, Clone, Serialize)]
pub struct Enrolled {
    pub fingerprint: String,
    /// `added`, `unchanged` or `replaced`.
    pub action: &'static str,
}

/// Fetches a target's host key (no authentication) and records it: a new key is added, a
/// known one left alone, and a changed one refused unless `replace` is set. A node behind a
/// jump host has the jump host enrolled first (directly), then its own key fetched through it.
pub async fn trust_host_key(
    target: &Target,
    replace: bool,
    timeout: Duration,
) -> anyhow::Result<Enrolled> {
    if let Some(jump) = &target.jump {
        enrol(jump, replace, timeout)
            .await
            .context("enrolling its jump host")?;
    }
    enrol(target, replace, timeout).await
}

async fn enrol(target: &Target, replace: bool, timeout: Duration) -> anyhow::Result<Enrolled> {
    let key = transport::fetch_host_key(target, timeout).await?;
    let fingerprint = known_hosts::fingerprint(&key);
    let known = KnownHosts::load(&target.known_hosts)?;
    let action = match known.check(&target.host, target.port, &key) {
        Verdict::Known => "unchanged",
        Verdict::Unknown => {
            known_hosts::record(&target.known_hosts, &target.host, target.port, &key, false)?;
            "added"
        }
        Verdict::Changed { lines } if replace => {
            known_hosts::record(&target.known_hosts, &target.host, target.port, &key, true)?;
            tracing::warn!(node = %target.node, ?lines, "replaced a recorded host key");
            "replaced"
        }
        Verdict::Changed { lines } => bail!(
            "offers {fingerprint}, but {} lines {lines:?} record another key for it; if the node was really reinstalled, run again with --replace",
            target.known_hosts.display()
        ),
        Verdict::Revoked { line } => {
            bail!(
                "offers {fingerprint}, which is revoked at {} line {line}",
                target.known_hosts.display()
            )
        }
    };
    Ok(Enrolled {
        fingerprint,
        action,
    })
}
