//! Maintenance windows in the inventory: where they may be written, how they resolve (a
//! cluster's own, else its customer's), how they print, and every bad value with its line and
//! column.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::{base, load, one, problems};
use fleet_inventory::{MaintenanceWindow, Opening, Weekday};

/// `base` with a customer_managed customer, `customer_extra` lines (4 spaces) on the customer
/// and `cluster_extra` lines (8 spaces) on the cluster.
fn managed(customer_extra: &str, cluster_extra: &str) -> String {
    base(cluster_extra, "").replace(
        "    mode: shared\n",
        &format!("    mode: customer_managed\n{customer_extra}"),
    )
}

#[test]
fn a_clusters_windows_resolve_and_print() {
    let inv = load(&managed(
        "",
        "        maintenance_windows:\n          - { days: [sun, sat], start: \"02:00\", end: \"05:00\" }\n          - { days: [wed], start: \"22:00\", end: \"01:00\", utc_offset: \"+01:00\" }\n",
    ));
    let cluster = &inv.clusters()[0];
    assert_eq!(
        cluster.maintenance_windows,
        [
            MaintenanceWindow {
                days: vec![Weekday::Sat, Weekday::Sun],
                start: 120,
                end: 300,
                utc_offset: 0
            },
            MaintenanceWindow {
                days: vec![Weekday::Wed],
                start: 1320,
                end: 60,
                utc_offset: 60
            }
        ]
    );
    let push = cluster.push_route(inv.nodes()[0].mode);
    assert_eq!(
        push,
        "over SSH, in maintenance windows (sat,sun 02:00-05:00 UTC; wed 22:00-01:00 UTC+01:00)"
    );
    let view = serde_json::to_value(inv.views()).expect("json");
    assert_eq!(view[0]["push"], push.as_str());
    assert_eq!(view[0]["maintenance_windows"][1]["utc_offset"], "+01:00");
    assert_eq!(view[0]["maintenance_windows"][0]["days"][1], "sun");
    assert!(
        inv.nodes()[0]
            .summary_line(cluster)
            .contains(&format!("push={push:?}"))
    );
}

#[test]
fn clusters_inherit_their_customers_windows_unless_they_set_their_own() {
    let text = managed(
        "    maintenance_windows: [{ days: [mon], start: \"01:00\", end: \"02:00\" }]\n",
        "",
    );
    let inv = load(&text);
    assert_eq!(
        inv.clusters()[0].maintenance_windows[0].to_string(),
        "mon 01:00-02:00 UTC"
    );
    // An empty list on the cluster: none, any time.
    let own = managed(
        "    maintenance_windows: [{ days: [mon], start: \"01:00\", end: \"02:00\" }]\n",
        "        maintenance_windows: []\n",
    );
    let inv = load(&own);
    assert!(inv.clusters()[0].maintenance_windows.is_empty());
    assert_eq!(
        inv.clusters()[0].push_route(inv.nodes()[0].mode),
        "over SSH, any time (no maintenance windows)"
    );
}

#[test]
fn the_push_route_of_each_mode() {
    let inv = load(&base("", ""));
    let cluster = &inv.clusters()[0];
    assert_eq!(
        cluster.push_route(fleet_inventory::Mode::Shared),
        "over SSH by us"
    );
    assert_eq!(
        cluster.push_route(fleet_inventory::Mode::Airgapped),
        "never: offline bundle"
    );
    assert_eq!(inv.nodes()[0].never_contacted(), None);
    let offline = load(&base("", "").replace("mode: shared", "mode: airgapped"));
    assert_eq!(
        offline.nodes()[0].never_contacted().as_deref(),
        Some(
            "customer acme is airgapped: never contacted over SSH; give it an offline bundle (fleet installer build --offline)"
        )
    );
}

#[test]
fn windows_on_a_customer_that_is_not_customer_managed_are_refused() {
    assert_eq!(
        one(&base(
            "        maintenance_windows: [{ days: [sat], start: \"02:00\", end: \"05:00\" }]\n",
            ""
        )),
        "/inv/fleet.yaml:11:30: customers.acme.clusters.prod.maintenance_windows: maintenance windows apply only to customer_managed customers, and this one is shared (hint: remove them, or set the customer's mode to customer_managed)"
    );
}

#[test]
fn bad_windows_are_reported_each_with_its_place() {
    let text = managed(
        "",
        "        maintenance_windows:
          - { days: [sat, sunday], start: \"2:00\", end: \"25:00\" }
          - { days: [mon, mon], start: \"02:60\", end: \"03:00\", utc_offset: \"Europe/Paris\" }
          - { days: [], start: \"24:00\", end: \"01:00\", utc_offset: \"+15:00\" }
          - { days: [tue], start: \"03:00\", end: \"03:00\" }
          - { days: tue, strat: \"01:00\", end: \"02:00\" }
          - [sat]
          - { days: [frii], start: \"01:00\", end: \"02:00\" }
",
    );
    let lines: Vec<String> = problems(&text).iter().map(ToString::to_string).collect();
    let w = "/inv/fleet.yaml";
    let p = "customers.acme.clusters.prod.maintenance_windows";
    assert_eq!(
        lines,
        [
            format!(
                "{w}:12:27: {p}[0].days[1]: unknown day `sunday` (hint: one of: mon, tue, wed, thu, fri, sat, sun)"
            ),
            format!(
                "{w}:12:56: {p}[0].end: `25:00` is not a time of day (hint: write HH:MM from 00:00 to 24:00, e.g. \"05:00\")"
            ),
            format!("{w}:13:27: {p}[1].days[1]: `mon` is listed twice"),
            format!(
                "{w}:13:40: {p}[1].start: `02:60` is not a time of day (hint: write HH:MM from 00:00 to 23:59, e.g. \"02:00\")"
            ),
            format!(
                "{w}:13:75: {p}[1].utc_offset: `Europe/Paris` is not a UTC offset (hint: write a fixed offset +HH:MM or -HH:MM within ±14:00, e.g. \"+01:00\" (no time-zone names: a window does not move with daylight saving))"
            ),
            format!("{w}:14:21: {p}[2].days: no days (hint: write e.g. [sat, sun])"),
            format!(
                "{w}:14:32: {p}[2].start: `24:00` is not a time of day (hint: write HH:MM from 00:00 to 23:59, e.g. \"02:00\")"
            ),
            format!(
                "{w}:14:67: {p}[2].utc_offset: `+15:00` is not a UTC offset (hint: write a fixed offset +HH:MM or -HH:MM within ±14:00, e.g. \"+01:00\" (no time-zone names: a window does not move with daylight saving))"
            ),
            format!(
                "{w}:15:49: {p}[3].end: the window starts and ends at 03:00: it never opens (hint: a window across midnight ends on the next day's clock, e.g. start: \"22:00\", end: \"02:00\")"
            ),
            format!("{w}:16:13: {p}[4].start: missing required key `start`"),
            format!(
                "{w}:16:21: {p}[4].days: expected a list of days, found a string (hint: write e.g. [sat, sun])"
            ),
            format!("{w}:16:26: {p}[4].strat: unknown key `strat` (hint: did you mean `start`?)"),
            format!("{w}:17:13: {p}[5]: expected a map, found a list"),
            format!("{w}:18:22: {p}[6].days[0]: unknown day `frii` (hint: did you mean `fri`?)"),
        ]
    );
}

#[test]
fn the_next_window_from_the_inventory() {
    let inv = load(&managed(
        "",
        "        maintenance_windows: [{ days: [sat], start: \"02:00\", end: \"05:00\", utc_offset: \"-05:00\" }]\n",
    ));
    let windows = &inv.clusters()[0].maintenance_windows;
    // Monday 2026-11-30 12:00 UTC: next Saturday 02:00 at UTC-05:00, 07:00 UTC.
    let monday_noon = UNIX_EPOCH + Duration::from_secs(1_795_996_800 + 12 * 3600);
    let saturday = UNIX_EPOCH + Duration::from_secs(1_795_996_800 + 5 * 86_400 + 7 * 3600);
    match Opening::at(windows, monday_noon) {
        Opening::Closed { window, opens } => {
            assert_eq!(opens, saturday);
            assert_eq!(window.to_string(), "sat 02:00-05:00 UTC-05:00");
        }
        other => panic!("expected closed, got {other:?}"),
    }
    assert!(Opening::at(windows, saturday + Duration::from_secs(60)).is_open());
    assert!(!Opening::at(windows, saturday - Duration::from_secs(1)).is_open());
}
