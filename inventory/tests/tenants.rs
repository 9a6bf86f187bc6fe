//! A shared cluster's tenants: the customers on it, by name or with their own limit of running
//! runs; refused on other modes' clusters, with bad names, twice, or with unknown keys, each
//! with its line and column.

mod common;

use common::{base, load, one, problems};
use fleet_inventory::TenantSpec;

#[test]
fn a_shared_clusters_tenants_resolve_in_order() {
    let inv = load(&base(
        "        tenants: [globex, { name: initech, max_running_flows: 2 }]\n",
        "",
    ));
    let cluster = inv.cluster_of(&inv.nodes()[0]).expect("cluster");
    assert_eq!(
        cluster.tenants,
        [
            TenantSpec {
                name: "globex".into(),
                max_running_flows: None
            },
            TenantSpec {
                name: "initech".into(),
                max_running_flows: Some(2)
            }
        ]
    );
    // No `tenants`: none.
    let inv = load(&base("", ""));
    assert!(
        inv.cluster_of(&inv.nodes()[0])
            .expect("cluster")
            .tenants
            .is_empty()
    );
}

#[test]
fn tenants_outside_a_shared_cluster_or_badly_named_are_refused() {
    let dedicated =
        base("        tenants: [globex]\n", "").replace("mode: shared", "mode: dedicated");
    assert_eq!(
        one(&dedicated),
        "/inv/fleet.yaml:11:18: customers.acme.clusters.prod.tenants: tenants apply only to shared customers' clusters, and this one is dedicated (hint: remove them, or set the customer's mode to shared)"
    );
    for (tenants, says) in [
        ("[Globex]", "invalid tenant name `Globex`"),
        ("[default]", "invalid tenant name `default`"),
        ("[../x]", "invalid tenant name `../x`"),
        ("[globex, globex]", "tenant `globex` is listed twice"),
        (
            "[{ name: globex, max_running_flows: 0 }]",
            "max_running_flows",
        ),
        ("[{ name: globex, limit: 2 }]", "limit"),
        ("globex", "a list of tenants"),
    ] {
        let all = problems(&base(&format!("        tenants: {tenants}\n"), ""));
        assert_eq!(all.len(), 1, "{tenants}: {all:?}");
        let text = all[0].to_string();
        assert!(
            text.contains("customers.acme.clusters.prod.tenants") && text.contains(says),
            "{tenants}: {text}"
        );
        assert!(text.starts_with("/inv/fleet.yaml:11:"), "{tenants}: {text}");
    }
}
