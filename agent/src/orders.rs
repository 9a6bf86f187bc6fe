//! Accepting signed rollout orders and controls (`fleet_release::order`) on this node. The node
//! believes an order only when a threshold of its pinned root's **order** keys signed it; then
//! it holds the order to what it knows itself: its cluster, its name among the targets, the
//! highest sequence it accepted (`state/order-sequence`, only ever raised), the release staged
//! with the order's manifest digest, and the release that was active when the order's rollout
//! began (`state/orders/<rollout>.json`), below which only that rollout's rollback may go.
//! Not the rollout itself: coordinating the upgrade (slots, Redis, the upgrade step) is the
//! daemon's; this only decides whether an order or control is one this node takes.
//!
//! Crash-safe: every check comes before any write; then the sequence floor is raised (one
//! atomic file write), then the rollout's record is written (one atomic file write). A crash
//! between the two leaves an order refused as a replay that the node never said it accepted
//! (the controller signs it again with a higher sequence); never a floor that dropped.

use std::fs;
use std::time::SystemTime;

use fleet_release::order::{Control, Order, SignedControl, SignedOrder};
use fleet_release::{PublicKey, ReleaseError, Root};
use serde::{Deserialize, Serialize};

use crate::layout::Layout;
use crate::ops::{is_staged, read_number};
use crate::{AgentError, io};

/// An order this node accepted.
#[derive(Debug, Clone)]
pub struct AcceptedOrder {
    pub order: Order,
    /// The signed document as accepted (what the node keeps and can hand on).
    pub document: String,
    /// The order keys whose signatures counted.
    pub signers: Vec<PublicKey>,
    /// The release active on this node when the order's rollout began (`None` on a node that
    /// ran none): the order's target is never below it, except in that rollout's rollback.
    pub active_at_start: Option<String>,
}

/// A control this node accepted.
#[derive(Debug, Clone)]
pub struct AcceptedControl {
    pub control: Control,
    /// The signed document as accepted.
    pub document: String,
    pub signers: Vec<PublicKey>,
}

/// What `state/orders/<rollout>.control` holds: the last control of the rollout accepted here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRecord {
    pub action: fleet_release::order::Action,
    pub sequence: u64,
    /// The signed document as accepted.
    pub document: String,
}

/// What `state/orders/<rollout>.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRecord {
    pub rollout: String,
    /// The release active when the first order of the rollout was accepted here.
    pub active_at_start: Option<String>,
    /// The sequence of the last order of the rollout accepted here.
    pub sequence: u64,
    /// That order, as verified when it was accepted.
    pub order: Order,
    /// That order, the signed document as accepted.
    pub document: String,
}

/// Accepts the signed rollout order `bytes` for node `node` of cluster `cluster`
/// (`customer/cluster`) at time `now`, or refuses it, each refusal with its own error: no
/// signature or a bad one, a key that is not one of the pinned root's order keys, an expired
/// order, a sequence not above the highest this node accepted, another cluster, this node not
/// among the targets, the release not staged with the order's manifest digest, and a target
/// older than the release active when the rollout began (unless the order is the rollback of
/// that rollout to exactly that release). The very order this node took before is taken again
/// without a write (it arrives both over SSH and through Redis). Holds the node's lock.
pub fn accept_order(
    layout: &Layout,
    node: &str,
    cluster: &str,
    bytes: &[u8],
    now: SystemTime,
) -> Result<AcceptedOrder, AgentError> {
    let _lock = layout.lock()?;
    let root = Root::load(&layout.trust_root())?;
    let verified = SignedOrder::verify(bytes, &root, now).map_err(refused)?;
    let order = verified.document.body().clone();
    if order.cluster != cluster {
        return Err(AgentError::WrongCluster {
            what: "rollout order",
            ordered: order.cluster,
            node: cluster.into(),
        });
    }
    if !order.targets.iter().any(|t| t == node) {
        return Err(AgentError::NotTargeted {
            rollout: order.rollout,
            node: node.into(),
        });
    }
    let document = verified.document.to_json();
    let record = read_record(layout, &order.rollout)?;
    // The same order again (handed over SSH after it arrived through Redis, or the other way
    // round) changes nothing: it is taken as it was.
    if let Some(r) = record.as_ref().filter(|r| r.document == document) {
        return Ok(AcceptedOrder {
            order,
            document,
            signers: verified.signers,
            active_at_start: r.active_at_start.clone(),
        });
    }
    check_sequence(layout, "rollout order", order.sequence)?;
    let version = order.version.to_string();
    check_digest(layout, &version, &order.manifest_sha256)?;
    let active_at_start = match &record {
        Some(record) => record.active_at_start.clone(),
        None => layout.link_version(&layout.current())?,
    };
    check_downgrade(layout, &order, active_at_start.as_deref())?;

    raise_sequence(layout, order.sequence)?;
    let record = OrderRecord {
        rollout: order.rollout.clone(),
        active_at_start: active_at_start.clone(),
        sequence: order.sequence,
        order: order.clone(),
        document: document.clone(),
    };
    write_json(layout, &layout.order_record(&order.rollout), &record)?;
    Ok(AcceptedOrder {
        order,
        document,
        signers: verified.signers,
        active_at_start,
    })
}

/// Accepts the signed rollout control `bytes` for cluster `cluster` at time `now`, or refuses
/// it with the same checks as an order's signature, keys, expiry, sequence (shared with
/// orders) and cluster. Holds the node's lock; raises the sequence floor, then records the
/// control (`state/orders/<rollout>.control`, one atomic write).
pub fn accept_control(
    layout: &Layout,
    cluster: &str,
    bytes: &[u8],
    now: SystemTime,
) -> Result<AcceptedControl, AgentError> {
    let _lock = layout.lock()?;
    let root = Root::load(&layout.trust_root())?;
    let verified = SignedControl::verify(bytes, &root, now).map_err(refused)?;
    let control = verified.document.body().clone();
    if control.cluster != cluster {
        return Err(AgentError::WrongCluster {
            what: "rollout control",
            ordered: control.cluster,
            node: cluster.into(),
        });
    }
    let document = verified.document.to_json();
    let recorded = read_json::<ControlRecord>(&layout.control_record(&control.rollout))?;
    if recorded.is_some_and(|r| r.document == document) {
        return Ok(AcceptedControl {
            control,
            document,
            signers: verified.signers,
        });
    }
    check_sequence(layout, "rollout control", control.sequence)?;
    raise_sequence(layout, control.sequence)?;
    let record = ControlRecord {
        action: control.action,
        sequence: control.sequence,
        document: document.clone(),
    };
    write_json(layout, &layout.control_record(&control.rollout), &record)?;
    Ok(AcceptedControl {
        control,
        document,
        signers: verified.signers,
    })
}

/// The record of rollout `rollout` on this node, if it accepted an order of it.
pub fn order_record(layout: &Layout, rollout: &str) -> Result<Option<OrderRecord>, AgentError> {
    fleet_release::order::check_rollout(rollout).map_err(refused)?;
    read_record(layout, rollout)
}

/// The last control of rollout `rollout` this node accepted, if any.
pub fn control_record(layout: &Layout, rollout: &str) -> Result<Option<ControlRecord>, AgentError> {
    fleet_release::order::check_rollout(rollout).map_err(refused)?;
    read_json(&layout.control_record(rollout))
}

/// This node's own progress in rollout `rollout`, as its daemon last wrote it.
pub fn read_progress(
    layout: &Layout,
    rollout: &str,
) -> Result<Option<fleet_proto::NodeProgress>, AgentError> {
    fleet_release::order::check_rollout(rollout).map_err(refused)?;
    read_json(&layout.rollout_progress(rollout))
}

/// Writes this node's progress in its rollout (the daemon's, one atomic write).
pub fn write_progress(
    layout: &Layout,
    rollout: &str,
    progress: &fleet_proto::NodeProgress,
) -> Result<(), AgentError> {
    write_json(layout, &layout.rollout_progress(rollout), progress)
}

/// The ids of the rollouts this node accepted an order of, by name.
pub fn accepted_rollouts(layout: &Layout) -> Result<Vec<String>, AgentError> {
    let dir = layout.orders();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name();
        if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json"))
            && fleet_proto::is_rollout_id(id)
        {
            ids.push(id.to_owned());
        }
    }
    ids.sort();
    Ok(ids)
}

/// This node's report on rollout `rollout` read from its records alone, as answered when no
/// daemon runs: its own progress as last written, the other targets unknown.
pub fn disk_report(
    layout: &Layout,
    node: &str,
    rollout: &str,
) -> Result<fleet_proto::RolloutReport, AgentError> {
    let record = order_record(layout, rollout)?.ok_or_else(|| AgentError::UnknownRollout {
        rollout: rollout.into(),
    })?;
    let own = read_progress(layout, rollout)?;
    let asked = control_record(layout, rollout)?.map(|c| asked(c.action));
    let nodes = record
        .order
        .upgrade_sequence()
        .into_iter()
        .map(|n| match &own {
            Some(p) if n == node => p.clone(),
            _ => fleet_proto::NodeProgress::new(n),
        })
        .collect();
    Ok(fleet_proto::RolloutReport {
        rollout: rollout.into(),
        cluster: record.order.cluster.clone(),
        version: record.order.version.to_string(),
        reported_by: node.into(),
        nodes,
        asked,
        halted: None,
        redis_error: None,
        daemon: false,
        reported_at_unix_ms: crate::unix_ms(),
    })
}

/// A control's action as the report names it.
pub fn asked(action: fleet_release::order::Action) -> fleet_proto::Asked {
    use fleet_release::order::Action;
    match action {
        Action::Pause => fleet_proto::Asked::Pause,
        Action::Resume => fleet_proto::Asked::Resume,
        Action::Abort => fleet_proto::Asked::Abort,
        Action::AbortRollback => fleet_proto::Asked::AbortRollback,
    }
}

/// The highest order or control sequence this node accepted (0 before the first).
pub fn order_sequence(layout: &Layout) -> Result<u64, AgentError> {
    Ok(read_number(&layout.order_sequence())?.unwrap_or(0))
}

/// Sorts a refusal of the order's document into the agent's errors.
fn refused(e: ReleaseError) -> AgentError {
    match e {
        ReleaseError::MissingSignature { .. }
        | ReleaseError::BadSignature { .. }
        | ReleaseError::RepeatedSignature { .. }
        | ReleaseError::ThresholdNotMet { .. } => AgentError::OrderSignature(e),
        ReleaseError::NotOrderKey { .. }
        | ReleaseError::UnknownKey { .. }
        | ReleaseError::NoOrderKeys { .. } => AgentError::NotOrderKey(e),
        ReleaseError::OrderExpired { .. } => AgentError::OrderExpired(e),
        ReleaseError::BadOrder(_) | ReleaseError::TooLarge { .. } => AgentError::BadOrder(e),
        e => AgentError::Release(e),
    }
}

fn check_sequence(layout: &Layout, what: &'static str, sequence: u64) -> Result<(), AgentError> {
    let floor = order_sequence(layout)?;
    if sequence <= floor {
        return Err(AgentError::OrderReplayed {
            what,
            sequence,
            floor,
        });
    }
    Ok(())
}

fn raise_sequence(layout: &Layout, sequence: u64) -> Result<(), AgentError> {
    // Checked under the lock just before; the floor only rises.
    layout.write_atomic(&layout.order_sequence(), format!("{sequence}\n").as_bytes())
}

fn check_digest(layout: &Layout, version: &str, wanted: &str) -> Result<(), AgentError> {
    let path = layout.manifest_digest(version);
    if !is_staged(layout, version) || !path.is_file() {
        return Err(AgentError::OrderNotStaged {
            version: version.into(),
        });
    }
    let found = fs::read_to_string(&path).map_err(io(&path))?;
    let found = found.trim();
    if found != wanted {
        return Err(AgentError::DigestMismatch {
            version: version.into(),
            ordered: wanted.into(),
            staged: found.into(),
        });
    }
    Ok(())
}

/// Refuses a target older than the release active when the order's rollout began, unless the
/// order is the rollback of a rollout this node recorded, to the release active when that
/// rollout began.
fn check_downgrade(
    layout: &Layout,
    order: &Order,
    active_at_start: Option<&str>,
) -> Result<(), AgentError> {
    let Some(floor) = active_at_start else {
        return Ok(());
    };
    let older = floor
        .parse::<semver::Version>()
        .is_ok_and(|floor| order.version < floor);
    if !older {
        return Ok(());
    }
    if let Some(of) = &order.rollback_of {
        let began = read_record(layout, of)?.and_then(|r| r.active_at_start);
        if began.as_deref() == Some(order.version.to_string().as_str()) {
            return Ok(());
        }
    }
    Err(AgentError::OrderDowngrade {
        rollout: order.rollout.clone(),
        wanted: order.version.to_string(),
        floor: floor.into(),
    })
}

fn read_record(layout: &Layout, rollout: &str) -> Result<Option<OrderRecord>, AgentError> {
    read_json(&layout.order_record(rollout))
}

fn write_json<T: Serialize>(
    layout: &Layout,
    path: &std::path::Path,
    value: &T,
) -> Result<(), AgentError> {
    let mut text =
        serde_json::to_vec_pretty(value).map_err(|e| AgentError::Layout(e.to_string()))?;
    text.push(b'\n');
    layout.write_atomic(path, &text)
}

fn read_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> Result<Option<T>, AgentError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError::Layout(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}
