//! A rollout as data, before anything reaches a node: the clusters among the selected nodes,
//! each cluster's policy (its inventory `rollout` settings under the command line's), the
//! rollout's id, and the signed documents' bodies (the order and its controls). Not signing,
//! staging or sending: `start` and `control` do those with what this builds.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail};
use fleet_inventory::{Canary, Inventory, Node};
use fleet_release::Timestamp;
use fleet_release::order::{Action, Control, FORMAT, Order};

/// What the command line sets over a cluster's `rollout` policy.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// How many of the targets go first, alone (0: none).
    pub canary: Option<u32>,
    pub max_unavailable: Option<u32>,
    pub min_healthy_secs: Option<u64>,
    pub health_timeout_secs: Option<u64>,
    pub smoke_flow: Option<String>,
    /// How long the whole rollout may take.
    pub deadline: Option<Duration>,
}

/// Which targets are canaries, before staging says which targets take part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanaryChoice {
    /// The first N targets.
    First(usize),
    /// This node (the inventory's `canary: NAME`); the first target when it does not take part.
    Node(String),
}

/// One cluster's rollout: its selected nodes and its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    pub customer: String,
    pub name: String,
    /// The selected nodes of the cluster, in inventory order.
    pub targets: Vec<String>,
    /// Every node of the cluster, selected or not (the order names them so the agents count
    /// the ones that are down).
    pub members: Vec<String>,
    pub canary: CanaryChoice,
    pub max_unavailable: u32,
    pub min_healthy_secs: u64,
    pub health_timeout_secs: u64,
    pub smoke_flow: Option<String>,
    pub deadline: Duration,
}

/// The deadline when none is given: an hour, plus the health timeout and ten minutes (a drain
/// and a restart) per target.
pub fn default_deadline(targets: usize, health_timeout_secs: u64) -> Duration {
    let per_node = health_timeout_secs.saturating_add(600);
    Duration::from_secs(3600u64.saturating_add(per_node.saturating_mul(targets as u64)))
}

/// One plan per cluster among `selected` (in the order clusters first appear), or every
/// problem with the command line's settings, one line each.
pub fn plan(
    inventory: &Inventory,
    selected: &[&Node],
    overrides: &Overrides,
) -> anyhow::Result<Vec<ClusterPlan>> {
    let mut plans: Vec<ClusterPlan> = Vec::new();
    let mut problems = Vec::new();
    for node in selected {
        if let Some(plan) = plans
            .iter_mut()
            .find(|p| p.customer == node.customer && p.name == node.cluster)
        {
            plan.targets.push(node.name.clone());
            continue;
        }
        let cluster = inventory
            .cluster_of(node)
            .expect("a loaded inventory places every node in a cluster");
        let policy = &cluster.rollout;
        plans.push(ClusterPlan {
            customer: cluster.customer.clone(),
            name: cluster.name.clone(),
            targets: vec![node.name.clone()],
            members: cluster.nodes.clone(),
            canary: match (&overrides.canary, &policy.canary) {
                (Some(n), _) => CanaryChoice::First(*n as usize),
                (None, Canary::Off) => CanaryChoice::First(0),
                (None, Canary::Auto) => CanaryChoice::First(1),
                (None, Canary::Node(name)) => CanaryChoice::Node(name.clone()),
            },
            max_unavailable: overrides.max_unavailable.unwrap_or(policy.max_unavailable),
            min_healthy_secs: overrides
                .min_healthy_secs
                .unwrap_or(policy.min_healthy_secs),
            health_timeout_secs: overrides
                .health_timeout_secs
                .unwrap_or(policy.health_timeout_secs),
            smoke_flow: overrides
                .smoke_flow
                .clone()
                .or_else(|| policy.smoke_flow.clone()),
            deadline: Duration::ZERO,
        });
    }
    for plan in &mut plans {
        let cluster = plan.cluster();
        plan.deadline = overrides
            .deadline
            .unwrap_or_else(|| default_deadline(plan.targets.len(), plan.health_timeout_secs));
        if let CanaryChoice::First(n) = plan.canary
            && n > plan.targets.len()
        {
            problems.push(format!(
                "--canary {n}: cluster {cluster} has {} selected node(s)",
                plan.targets.len()
            ));
        }
        if plan.max_unavailable == 0 {
            problems.push(format!(
                "cluster {cluster}: max_unavailable must be at least 1"
            ));
        }
        if plan.health_timeout_secs < plan.min_healthy_secs {
            problems.push(format!(
                "cluster {cluster}: the health timeout ({} s) is shorter than min_healthy ({} s): no node could pass its gate; raise --health-timeout",
                plan.health_timeout_secs, plan.min_healthy_secs
            ));
        }
        if let Some(flow) = &plan.smoke_flow
            && !fleet_inventory::is_flow_name(flow)
        {
            problems.push(format!(
                "--smoke-flow {flow:?} is not a flow name ({})",
                fleet_inventory::FLOW_NAME_HINT
            ));
        }
        if plan.deadline < Duration::from_secs(60) {
            problems.push(format!(
                "--deadline {}: a rollout needs at least a minute",
                humantime::format_duration(plan.deadline)
            ));
        }
    }
    problems.dedup();
    if problems.is_empty() {
        Ok(plans)
    } else {
        Err(anyhow!(problems.join("; ")))
    }
}

impl ClusterPlan {
    /// `customer/cluster`, as orders and the state store name it.
    pub fn cluster(&self) -> String {
        format!("{}/{}", self.customer, self.name)
    }

    /// The canaries among the targets that take part (`staged`, in inventory order).
    pub fn canary_among(&self, staged: &[String]) -> Vec<String> {
        match &self.canary {
            CanaryChoice::First(n) => staged.iter().take(*n).cloned().collect(),
            CanaryChoice::Node(name) if staged.contains(name) => vec![name.clone()],
            CanaryChoice::Node(_) => staged.iter().take(1).cloned().collect(),
        }
    }

    /// The order body moving `targets` (those that staged) to `version`, valid from `now`
    /// until the rollout's deadline: the agents verify it again each time they read it from
    /// their cluster's Redis, so it must not expire before the rollout may end.
    pub fn order(
        &self,
        rollout: &str,
        version: &semver::Version,
        manifest_sha256: &str,
        targets: Vec<String>,
        sequence: u64,
        now: SystemTime,
    ) -> Order {
        let created = Timestamp::from(now);
        let deadline = created.plus(self.deadline);
        Order {
            format: FORMAT,
            rollout: rollout.to_owned(),
            cluster: self.cluster(),
            version: version.clone(),
            manifest_sha256: manifest_sha256.to_owned(),
            canary: self.canary_among(&targets),
            targets,
            max_unavailable: self.max_unavailable,
            min_healthy_secs: self.min_healthy_secs,
            health_timeout_secs: self.health_timeout_secs,
            smoke_flow: self.smoke_flow.clone(),
            members: self.members.clone(),
            rollback_of: None,
            deadline,
            sequence,
            created,
            expires: deadline,
        }
    }
}

/// A rollout id: `customer.cluster-YYYYMMDDTHHMMSSZ-xxxx` (four random hex digits), the
/// cluster part shortened so the id stays within the 64 characters nodes accept.
pub fn rollout_id(customer: &str, cluster: &str, now: SystemTime, random: [u8; 2]) -> String {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let suffix = format!("-{stamp}-{}", hex::encode(random));
    let mut name = format!("{customer}.{cluster}");
    name.truncate(64 - suffix.len());
    let id = format!("{}{suffix}", name.trim_end_matches(['.', '-']));
    debug_assert!(fleet_proto::is_rollout_id(&id), "{id}");
    id
}

/// A fresh rollout id for `plan`'s cluster.
pub fn new_rollout_id(plan: &ClusterPlan) -> anyhow::Result<String> {
    let mut random = [0u8; 2];
    getrandom::fill(&mut random).map_err(|e| anyhow!("random bytes for a rollout id: {e}"))?;
    Ok(rollout_id(
        &plan.customer,
        &plan.name,
        SystemTime::now(),
        random,
    ))
}

/// The control body asking `action` of `order`'s rollout. It is valid as long as the order
/// (the agents pass it on through Redis and verify it each time), and at least an hour.
pub fn control(order: &Order, action: Action, sequence: u64, now: SystemTime) -> Control {
    let floor = Timestamp::from(now).plus(Duration::from_secs(3600));
    let expires = if order.deadline.0 > floor.0 {
        order.deadline
    } else {
        floor
    };
    Control {
        format: FORMAT,
        rollout: order.rollout.clone(),
        cluster: order.cluster.clone(),
        action,
        sequence,
        expires,
    }
}

/// Reads `--deadline`: a duration (`90m`, `4h`).
pub fn parse_deadline(text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text)
        .map_err(|e| anyhow!("--deadline {text:?}: not a duration such as 90m or 4h ({e})"))
}

/// Refuses an order whose signed form nodes would refuse as too large.
pub fn check_size(document: &str) -> anyhow::Result<()> {
    if document.len() as u64 > fleet_release::order::ORDER_CAP {
        bail!(
            "the signed order is {} bytes, above the {} nodes read: select fewer nodes per cluster",
            document.len(),
            fleet_release::order::ORDER_CAP
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const INVENTORY: &str = "\
defaults: { ssh: { user: etl } }
customers:
  acme:
    mode: dedicated
    clusters:
      prod:
        redis_url: redis://r/0
        postgres_url: postgres://p/db
        shared_storage: /s
        rollout: { canary: p2, max_unavailable: 2, min_healthy_secs: 5, health_timeout_secs: 50, smoke_flow: smoke }
        nodes:
          - { name: p1, host: 10.0.0.1 }
          - { name: p2, host: 10.0.0.2 }
          - { name: p3, host: 10.0.0.3 }
      test:
        redis_url: redis://r/1
        postgres_url: postgres://p/db
        shared_storage: /s
        nodes:
          - { name: t1, host: 10.0.1.1 }
          - { name: t2, host: 10.0.1.2 }
";

    fn inventory() -> Inventory {
        Inventory::from_str(INVENTORY, Path::new("/inv.yaml")).expect("a valid inventory")
    }

    fn plans(limit: &str, overrides: &Overrides) -> anyhow::Result<Vec<ClusterPlan>> {
        let inv = inventory();
        let nodes = inv.select(limit).expect("selects");
        plan(&inv, &nodes, overrides)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn one_plan_per_cluster_with_the_inventory_policy() {
        let plans = plans("p3,t2,p1,t1", &Overrides::default()).expect("plans");
        assert_eq!(plans.len(), 2);
        let prod = &plans[0];
        assert_eq!(prod.cluster(), "acme/prod");
        assert_eq!(prod.targets, names(&["p1", "p3"]), "inventory order");
        assert_eq!(prod.canary, CanaryChoice::Node("p2".into()));
        assert_eq!(
            (
                prod.max_unavailable,
                prod.min_healthy_secs,
                prod.health_timeout_secs
            ),
            (2, 5, 50)
        );
        assert_eq!(prod.smoke_flow.as_deref(), Some("smoke"));
        assert_eq!(prod.deadline, default_deadline(2, 50));
        let test = &plans[1];
        assert_eq!(test.cluster(), "acme/test");
        assert_eq!(test.canary, CanaryChoice::First(0));
        assert_eq!(
            (
                test.max_unavailable,
                test.min_healthy_secs,
                test.health_timeout_secs
            ),
            (1, 10, 120)
        );
        assert_eq!(test.smoke_flow, None);
    }

    #[test]
    fn the_command_line_wins_over_the_policy() {
        let overrides = Overrides {
            canary: Some(2),
            max_unavailable: Some(3),
            min_healthy_secs: Some(1),
            health_timeout_secs: Some(9),
            smoke_flow: Some("other".into()),
            deadline: Some(Duration::from_secs(600)),
        };
        let plans = plans("acme/prod", &overrides).expect("plans");
        let prod = &plans[0];
        assert_eq!(prod.canary, CanaryChoice::First(2));
        assert_eq!(
            (
                prod.max_unavailable,
                prod.min_healthy_secs,
                prod.health_timeout_secs
            ),
            (3, 1, 9)
        );
        assert_eq!(prod.smoke_flow.as_deref(), Some("other"));
        assert_eq!(prod.deadline, Duration::from_secs(600));
    }

    #[test]
    fn settings_no_node_could_meet_are_refused_together() {
        let overrides = Overrides {
            canary: Some(4),
            health_timeout_secs: Some(3),
            smoke_flow: Some("no spaces".into()),
            ..Overrides::default()
        };
        let err = plans("acme/prod", &overrides)
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("--canary 4: cluster acme/prod has 3 selected node(s)"),
            "{err}"
        );
        assert!(
            err.contains("health timeout (3 s) is shorter than min_healthy (5 s)"),
            "{err}"
        );
        assert!(
            err.contains("--smoke-flow \"no spaces\" is not a flow name"),
            "{err}"
        );
        let short = Overrides {
            deadline: Some(Duration::from_secs(5)),
            ..Overrides::default()
        };
        let err = plans("t1", &short).expect_err("refused").to_string();
        assert!(
            err.contains("--deadline 5s: a rollout needs at least a minute"),
            "{err}"
        );
    }

    #[test]
    fn canaries_among_the_nodes_that_take_part() {
        let mut plan = plans("acme/prod", &Overrides::default()).expect("plans")[0].clone();
        assert_eq!(
            plan.canary_among(&names(&["p1", "p2", "p3"])),
            names(&["p2"])
        );
        // The policy's canary did not stage: the first node that did goes first instead.
        assert_eq!(plan.canary_among(&names(&["p1", "p3"])), names(&["p1"]));
        plan.canary = CanaryChoice::First(2);
        assert_eq!(
            plan.canary_among(&names(&["p1", "p2", "p3"])),
            names(&["p1", "p2"])
        );
        assert_eq!(plan.canary_among(&names(&["p3"])), names(&["p3"]));
        plan.canary = CanaryChoice::First(0);
        assert!(plan.canary_among(&names(&["p1"])).is_empty());
    }

    #[test]
    fn the_order_is_one_the_rules_accept_and_lasts_until_the_deadline() {
        let plan = plans("acme/prod", &Overrides::default()).expect("plans")[0].clone();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let version: semver::Version = "2.0.0".parse().expect("semver");
        let order = plan.order(
            "r1",
            &version,
            &"ab".repeat(32),
            names(&["p1", "p2", "p3"]),
            42,
            now,
        );
        fleet_release::order::SignedOrder::unsigned(order.clone()).expect("within the rules");
        assert_eq!(order.cluster, "acme/prod");
        assert_eq!(order.canary, names(&["p2"]));
        assert_eq!(order.upgrade_sequence(), names(&["p2", "p1", "p3"]));
        assert_eq!(order.smoke_flow.as_deref(), Some("smoke"));
        assert_eq!(order.deadline.0, now + plan.deadline);
        assert_eq!(order.expires, order.deadline);
        assert_eq!(order.sequence, 42);

        let pause = control(&order, Action::Pause, 43, now);
        fleet_release::order::SignedControl::unsigned(pause.clone()).expect("within the rules");
        assert_eq!((pause.rollout.as_str(), pause.sequence), ("r1", 43));
        assert_eq!(pause.expires, order.deadline);
        // Past the order's deadline, a control still lives an hour.
        let late = now + plan.deadline + Duration::from_secs(10);
        let abort = control(&order, Action::Abort, 44, late);
        assert_eq!(abort.expires.0, late + Duration::from_secs(3600));
    }

    #[test]
    fn ids_are_ones_nodes_accept() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let id = rollout_id("acme", "prod", now, [0xab, 0x01]);
        assert_eq!(id, "acme.prod-20270115T080000Z-ab01");
        let long = "c".repeat(60);
        let id = rollout_id(&long, "prod", now, [0, 0]);
        assert_eq!(id.len(), 64);
        assert!(fleet_proto::is_rollout_id(&id), "{id}");
        assert!(id.ends_with("-20270115T080000Z-0000"), "{id}");
    }
}
