//! When a rollout may start on a cluster: a `customer_managed` cluster's maintenance windows
//! (the inventory's) against the clock, and the lines that say what waits, what an operator's
//! `--now` overrode, and why the web refuses. The clock is a parameter; the computation is
//! `fleet_inventory::Opening`. Not the waiting itself (`cli/rollout.rs`) nor the web's answer
//! (`serve/rollouts.rs`).

use std::time::{Duration, SystemTime};

use fleet_inventory::{Inventory, Opening, describe_windows};

use super::plan::ClusterPlan;

/// A cluster outside its maintenance windows, and the window that opens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// `customer/cluster`.
    pub cluster: String,
    /// Every window of the cluster, in one line.
    pub windows: String,
    /// The window that opens next.
    pub next: String,
    pub opens: SystemTime,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Closed {
    /// How long from `now` until the window opens, in whole minutes.
    fn wait(&self, now: SystemTime) -> String {
        let secs = self.opens.duration_since(now).unwrap_or_default().as_secs();
        humantime::format_duration(Duration::from_secs(secs.div_ceil(60) * 60)).to_string()
    }

    /// What `fleet rollout start` prints while it waits.
    pub fn waiting_line(&self, now: SystemTime) -> String {
        format!(
            "{}: outside its maintenance windows ({}): waiting for the window {}, which opens at {} (in {}); --now starts it at once",
            self.cluster,
            self.windows,
            self.next,
            rfc3339(self.opens),
            self.wait(now)
        )
    }

    /// What an operator's `--now` overrode, for the audit log.
    pub fn overridden(&self) -> String {
        format!(
            "started {} outside its maintenance windows ({}); the next, {}, opens at {}",
            self.cluster,
            self.windows,
            self.next,
            rfc3339(self.opens)
        )
    }

    /// Why the web does not start it without an explicit "now".
    pub fn refusal(&self) -> String {
        format!(
            "{} is outside its maintenance windows ({}): the next, {}, opens at {}; start it then, or check \"now\" to override the window (recorded in the audit log)",
            self.cluster,
            self.windows,
            self.next,
            rfc3339(self.opens)
        )
    }
}

/// For each plan, in order: `Some` when its cluster is outside its maintenance windows at
/// `now`, `None` when a rollout may start on it (a window is open, or it has none).
pub fn closed(
    inventory: &Inventory,
    plans: &[ClusterPlan],
    now: SystemTime,
) -> Vec<Option<Closed>> {
    plans
        .iter()
        .map(|plan| {
            let cluster = inventory.cluster(&plan.customer, &plan.name)?;
            match Opening::at(&cluster.maintenance_windows, now) {
                Opening::Closed { window, opens } => Some(Closed {
                    cluster: plan.cluster(),
                    windows: describe_windows(&cluster.maintenance_windows),
                    next: window.to_string(),
                    opens,
                }),
                Opening::Always | Opening::Open { .. } => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const INVENTORY: &str = "
defaults: { ssh: { user: etl } }
customers:
  acme:
    mode: customer_managed
    clusters:
      prod:
        redis_url: redis://10.0.0.5:6379/0
        postgres_url: env:PG
        shared_storage: /mnt/etl
        maintenance_windows: [{ days: [sat, sun], start: \"02:00\", end: \"05:00\" }]
        nodes: [{ name: p1, host: 10.0.0.1 }]
      dev:
        redis_url: redis://10.0.0.5:6379/0
        postgres_url: env:PG
        shared_storage: /mnt/etl
        nodes: [{ name: d1, host: 10.0.0.2 }]
";

    #[test]
    fn a_cluster_outside_its_windows_waits_and_one_without_windows_does_not() {
        let inventory = Inventory::from_str(INVENTORY, Path::new("i.yaml")).expect("valid");
        let selected: Vec<_> = inventory.nodes().iter().collect();
        let plans = super::super::plan(&inventory, &selected, &Default::default()).expect("plans");
        // Monday 2026-11-30 12:00 UTC.
        let monday = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_996_800 + 12 * 3600);
        let closed = closed(&inventory, &plans, monday);
        let prod = closed[0].as_ref().expect("prod waits");
        assert_eq!(closed[1], None);
        assert_eq!(
            prod.waiting_line(monday),
            "acme/prod: outside its maintenance windows (sat,sun 02:00-05:00 UTC): waiting for the window sat,sun 02:00-05:00 UTC, which opens at 2026-12-05T02:00:00Z (in 4days 14h); --now starts it at once"
        );
        assert_eq!(
            prod.overridden(),
            "started acme/prod outside its maintenance windows (sat,sun 02:00-05:00 UTC); the next, sat,sun 02:00-05:00 UTC, opens at 2026-12-05T02:00:00Z"
        );
        // Saturday 03:00: open.
        let saturday = monday + Duration::from_secs(4 * 86_400 + 15 * 3600);
        assert_eq!(closed_at(&inventory, &plans, saturday), [false, false]);
    }

    fn closed_at(inventory: &Inventory, plans: &[ClusterPlan], now: SystemTime) -> Vec<bool> {
        closed(inventory, plans, now)
            .iter()
            .map(Option::is_some)
            .collect()
    }
}
