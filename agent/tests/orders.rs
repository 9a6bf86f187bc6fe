//! Rollout orders and controls on a real node root: every refusal with its message and code,
//! the sequence floor kept across calls, the order records, and the rollback exception.

mod common;
use common::{Node, node};

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use fleet_agent::{AgentError, Code, Layout, Refusal};
use fleet_release::Timestamp;
use fleet_release::order::{Action, Control, Order, SignedOrder};
use fleet_tests::{build_release, bundle_manifest_digest, release_tree, sign_order, test_order};

const NODE: &str = "n1";
const CLUSTER: &str = "acme/prod";

impl Node {
    /// Builds and stages `version`; answers its manifest digest.
    fn stage(&self, version: &str) -> String {
        let store = self.dir.path().join("store");
        let mut bundle: PathBuf = store.join(format!("{version}.bundle"));
        if !bundle.is_file() {
            let tree = release_tree(self.dir.path(), version);
            bundle = build_release(
                version,
                &tree,
                &self.signing.release_key,
                &store,
                SystemTime::now(),
            );
        }
        let bytes = fs::read(&bundle).expect("bundle");
        fleet_agent::stage(
            &self.layout,
            &version.parse().expect("semver"),
            &mut &bytes[..],
            SystemTime::now(),
        )
        .expect("staged");
        bundle_manifest_digest(&bundle)
    }

    fn activate(&self, version: &str) {
        fleet_agent::activate(&self.layout, &version.parse().expect("semver"), false)
            .expect("activated");
    }

    fn accept(&self, bytes: &[u8]) -> Result<fleet_agent::AcceptedOrder, AgentError> {
        fleet_agent::accept_order(&self.layout, NODE, CLUSTER, bytes, SystemTime::now())
    }

    fn control(&self, bytes: &[u8]) -> Result<fleet_agent::AcceptedControl, AgentError> {
        fleet_agent::accept_control(&self.layout, CLUSTER, bytes, SystemTime::now())
    }

    fn sequence(&self) -> u64 {
        fleet_agent::order_sequence(&self.layout).expect("the sequence floor")
    }

    fn records(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.layout.orders())
            .expect("state/orders")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        names
    }

    /// Refused with `code` and a message containing `text`, and nothing written.
    fn refused<T: std::fmt::Debug>(
        &self,
        outcome: impl FnOnce() -> Result<T, AgentError>,
        code: Code,
        text: &str,
    ) {
        let (sequence, records) = (self.sequence(), self.records());
        let err = outcome().expect_err("refused");
        let refusal = Refusal::from(err);
        assert_eq!(refusal.code, code, "{refusal}");
        assert!(refusal.error.contains(text), "{refusal}");
        assert_eq!(self.sequence(), sequence, "the floor moved on a refusal");
        assert_eq!(self.records(), records, "a record written on a refusal");
    }
}

fn order(version: &str, digest: &str, sequence: u64) -> Order {
    test_order("r1", version, digest, &[NODE, "n2"], sequence)
}

fn control(action: Action, sequence: u64) -> Control {
    Control {
        format: fleet_release::order::FORMAT,
        rollout: "r1".into(),
        cluster: CLUSTER.into(),
        action,
        sequence,
        expires: Timestamp::now().plus(Duration::from_secs(60)),
    }
}

#[test]
fn a_good_order_is_accepted_and_recorded() {
    let n = node();
    let d1 = n.stage("1.0.0");
    n.activate("1.0.0");
    let d2 = n.stage("2.0.0");
    assert_ne!(d1, d2);
    // `stage` keeps the digest of the exact signed manifest bytes beside the manifest.
    let kept = fs::read_to_string(n.layout.manifest_digest("2.0.0")).expect("digest");
    assert_eq!(kept.trim(), d2);

    let bytes = n.signing.order(order("2.0.0", &d2, 7));
    let accepted = n.accept(&bytes).expect("accepted");
    assert_eq!(accepted.order.rollout, "r1");
    assert_eq!(accepted.active_at_start.as_deref(), Some("1.0.0"));
    assert_eq!(accepted.signers, vec![n.signing.order_key.public()]);
    assert_eq!(accepted.document.as_bytes(), &bytes[..]);
    assert_eq!(n.sequence(), 7);
    let record = fleet_agent::order_record(&n.layout, "r1")
        .expect("readable")
        .expect("recorded");
    assert_eq!(record.active_at_start.as_deref(), Some("1.0.0"));
    assert_eq!(
        (record.sequence, record.document.as_bytes()),
        (7, &bytes[..])
    );
    assert_eq!(n.records(), ["r1.json"]);
}

#[test]
fn signatures_and_keys_are_refused_each_with_its_own_message() {
    let n = node();
    let d = n.stage("1.0.0");
    let good = order("1.0.0", &d, 1);

    let unsigned = SignedOrder::unsigned(good.clone()).expect("an order");
    n.refused(
        || n.accept(unsigned.to_json().as_bytes()),
        Code::OrderSignature,
        "rollout order is not signed",
    );
    let text = String::from_utf8(n.signing.order(good.clone())).expect("utf-8");
    let altered = text.replacen("\"max_unavailable\":1", "\"max_unavailable\":9", 1);
    assert_ne!(altered, text);
    n.refused(
        || n.accept(altered.as_bytes()),
        Code::OrderSignature,
        "does not verify",
    );
    n.refused(
        || n.accept(&sign_order(good.clone(), &n.signing.release_key)),
        Code::NotOrderKey,
        "signed by a release key, not an order key",
    );
    n.refused(
        || n.accept(&sign_order(good.clone(), &n.signing.root_key)),
        Code::NotOrderKey,
        "signed by a root key, not an order key",
    );
    let stranger = fleet_release::SecretKey::generate().expect("a key");
    n.refused(
        || n.accept(&sign_order(good.clone(), &stranger)),
        Code::NotOrderKey,
        "which the trust root does not name",
    );
    n.refused(
        || n.accept(b"{\"order\":"),
        Code::BadOrder,
        "bad rollout order",
    );
    let later = SystemTime::now() + Duration::from_secs(601);
    n.refused(
        || fleet_agent::accept_order(&n.layout, NODE, CLUSTER, &n.signing.order(good), later),
        Code::OrderExpired,
        "rollout order expired at",
    );
}

#[test]
fn orders_for_other_clusters_nodes_or_releases_are_refused() {
    let n = node();
    let d1 = n.stage("1.0.0");
    let d2 = n.stage("2.0.0");
    let other_cluster = Order {
        cluster: "acme/staging".into(),
        ..order("1.0.0", &d1, 1)
    };
    n.refused(
        || n.accept(&n.signing.order(other_cluster)),
        Code::WrongCluster,
        "it is for cluster acme/staging, this node is in acme/prod",
    );
    let elsewhere = test_order("r1", "1.0.0", &d1, &["n2", "n3"], 1);
    n.refused(
        || n.accept(&n.signing.order(elsewhere)),
        Code::NotTargeted,
        "does not name this node (n1)",
    );
    n.refused(
        || n.accept(&n.signing.order(order("3.0.0", &d1, 1))),
        Code::NotStaged,
        "release 3.0.0 is not staged on this node",
    );
    n.refused(
        || n.accept(&n.signing.order(order("1.0.0", &d2, 1))),
        Code::DigestMismatch,
        &format!("staged here with manifest digest {d1}, the order names {d2}"),
    );
    // A release staged before digests were kept is not one an order can name; staging it
    // again keeps its digest.
    fs::remove_file(n.layout.manifest_digest("1.0.0")).expect("remove the digest");
    n.refused(
        || n.accept(&n.signing.order(order("1.0.0", &d1, 1))),
        Code::NotStaged,
        "release 1.0.0 is not staged",
    );
    assert_eq!(n.stage("1.0.0"), d1);
    n.accept(&n.signing.order(order("1.0.0", &d1, 1)))
        .expect("staged again, accepted");
}

#[test]
fn the_sequence_only_rises_and_replays_are_refused() {
    let n = node();
    let d = n.stage("1.0.0");
    let first = n.signing.order(order("1.0.0", &d, 5));
    n.accept(&first).expect("accepted");
    assert_eq!(n.sequence(), 5);
    // The very same order again (it arrives over SSH and through Redis) is taken as it was,
    // writing nothing; another order with a sequence not above the floor is a replay.
    let (floor, records) = (n.sequence(), n.records());
    let record = fs::read(n.layout.order_record("r1")).expect("record");
    n.accept(&first).expect("the same order, taken again");
    assert_eq!((n.sequence(), n.records()), (floor, records));
    assert_eq!(
        fs::read(n.layout.order_record("r1")).expect("record"),
        record
    );
    let mut again = order("1.0.0", &d, 5);
    again.min_healthy_secs += 1;
    n.refused(
        || n.accept(&n.signing.order(again)),
        Code::OrderReplayed,
        "sequence 5 is not above 5, the highest this node accepted",
    );
    n.refused(
        || n.accept(&n.signing.order(order("1.0.0", &d, 4))),
        Code::OrderReplayed,
        "sequence 4 is not above 5",
    );
    // Controls share the sequence.
    n.refused(
        || n.control(&n.signing.control(control(Action::Pause, 5))),
        Code::OrderReplayed,
        "rollout control refused: sequence 5",
    );
    n.control(&n.signing.control(control(Action::Pause, 6)))
        .expect("a pause");
    assert_eq!(n.sequence(), 6);
    n.refused(
        || n.accept(&n.signing.order(order("1.0.0", &d, 6))),
        Code::OrderReplayed,
        "sequence 6 is not above 6",
    );
    n.accept(&n.signing.order(order("1.0.0", &d, 9)))
        .expect("a later order");
    // Kept on disk: a fresh layout over the same root reads the same floor.
    let again = Layout::new(n.layout.root());
    assert_eq!(fleet_agent::order_sequence(&again).expect("floor"), 9);
    assert_eq!(
        fs::read_to_string(n.layout.order_sequence()).expect("state/order-sequence"),
        "9\n"
    );
}

#[test]
fn controls_are_checked_like_orders() {
    let n = node();
    let accepted = n
        .control(&n.signing.control(control(Action::AbortRollback, 1)))
        .expect("accepted");
    assert_eq!(accepted.control.action, Action::AbortRollback);
    assert_eq!(n.sequence(), 1);
    let other = Control {
        cluster: "acme/staging".into(),
        ..control(Action::Pause, 2)
    };
    n.refused(
        || n.control(&n.signing.control(other)),
        Code::WrongCluster,
        "rollout control refused: it is for cluster acme/staging",
    );
    let mut by_release =
        fleet_release::SignedControl::unsigned(control(Action::Resume, 2)).expect("a control");
    by_release.sign(&n.signing.release_key);
    n.refused(
        || n.control(by_release.to_json().as_bytes()),
        Code::NotOrderKey,
        "signed by a release key, not an order key",
    );
    let later = SystemTime::now() + Duration::from_secs(61);
    n.refused(
        || {
            fleet_agent::accept_control(
                &n.layout,
                CLUSTER,
                &n.signing.control(control(Action::Abort, 2)),
                later,
            )
        },
        Code::OrderExpired,
        "rollout control expired at",
    );
    // An order's document is not a control.
    let d = n.stage("1.0.0");
    n.refused(
        || n.control(&n.signing.order(order("1.0.0", &d, 2))),
        Code::BadOrder,
        "not a rollout control",
    );
}

#[test]
fn no_order_goes_below_the_release_active_when_its_rollout_began_but_its_rollback() {
    let n = node();
    let d1 = n.stage("1.0.0");
    let d2 = n.stage("2.0.0");
    n.activate("1.0.0");
    // Rollout r1 begins on 1.0.0 and takes the node to 2.0.0.
    n.accept(&n.signing.order(order("2.0.0", &d2, 1)))
        .expect("r1");
    n.activate("2.0.0");
    // A new rollout begins on 2.0.0: it may not go to 1.0.0.
    let down = test_order("r2", "1.0.0", &d1, &[NODE], 2);
    n.refused(
        || n.accept(&n.signing.order(down.clone())),
        Code::OrderDowngrade,
        "release 1.0.0 is older than 2.0.0, the release active when rollout r2 began",
    );
    // Nor may one that calls itself the rollback of a rollout this node never took, or of r1
    // to another release than the one r1 began on.
    let d0 = n.stage("0.9.0");
    for (of, version, digest) in [("r9", "1.0.0", &d1), ("r1", "0.9.0", &d0)] {
        let fake = Order {
            rollback_of: Some(of.into()),
            ..test_order("r2", version, digest, &[NODE], 2)
        };
        n.refused(
            || n.accept(&n.signing.order(fake)),
            Code::OrderDowngrade,
            "only that rollout's rollback may go below it",
        );
    }
    // The rollback of r1 to the release r1 began on is accepted.
    let rollback = Order {
        rollback_of: Some("r1".into()),
        ..down
    };
    let accepted = n.accept(&n.signing.order(rollback)).expect("the rollback");
    assert_eq!(accepted.active_at_start.as_deref(), Some("2.0.0"));
    // Within r1 itself, going back to where it began is not below its floor.
    let back = Order {
        rollback_of: Some("r1".into()),
        ..order("1.0.0", &d1, 3)
    };
    let accepted = n.accept(&n.signing.order(back)).expect("r1 back to 1.0.0");
    assert_eq!(accepted.active_at_start.as_deref(), Some("1.0.0"));
    assert_eq!(n.records(), ["r1.json", "r2.json"]);
}
