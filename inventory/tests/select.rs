//! Target selection (`--limit`): every term form, exclusions, and every error.

mod common;

use fleet_inventory::{Inventory, SelectError};

const FLEET: &str = "\
defaults: { ssh: { user: etl } }
customers:
  acme:
    mode: shared
    labels: { region: eu-west-2 }
    clusters:
      prod:
        redis_url: redis://r/0
        postgres_url: postgres://p/db
        shared_storage: /s
        labels: { tier: prod }
        nodes:
          - { name: acme-prod-1, host: 10.0.1.1 }
          - { name: acme-prod-2, host: 10.0.1.2 }
      stage:
        redis_url: redis://r/0
        postgres_url: postgres://p/db
        shared_storage: /s
        labels: { tier: stage }
        nodes:
          - { name: acme-stage-1, host: 10.0.2.1 }
  globex:
    mode: dedicated
    labels: { region: us-east-1 }
    clusters:
      prod:
        redis_url: redis://r/0
        postgres_url: postgres://p/db
        shared_storage: /s
        labels: { tier: prod }
        nodes:
          - { name: globex-prod-1, host: 10.1.1.1 }
          - { name: acme, host: 10.1.1.2 }
";

fn fleet() -> Inventory {
    common::load(FLEET)
}

fn names(inventory: &Inventory, pattern: &str) -> Vec<String> {
    match inventory.select(pattern) {
        Ok(nodes) => nodes.iter().map(|n| n.name.clone()).collect(),
        Err(err) => panic!("`{pattern}`: {err}"),
    }
}

#[test]
fn label_terms_with_globs() {
    let inv = fleet();
    assert_eq!(
        names(&inv, "tier=prod"),
        ["acme-prod-1", "acme-prod-2", "globex-prod-1", "acme"]
    );
    assert_eq!(
        names(&inv, "region=eu-*"),
        ["acme-prod-1", "acme-prod-2", "acme-stage-1"]
    );
    assert_eq!(names(&inv, "region=us-east-?"), ["globex-prod-1", "acme"]);
}

#[test]
fn customer_slash_cluster_terms() {
    let inv = fleet();
    assert_eq!(names(&inv, "acme/prod"), ["acme-prod-1", "acme-prod-2"]);
    assert_eq!(
        names(&inv, "*/prod"),
        ["acme-prod-1", "acme-prod-2", "globex-prod-1", "acme"]
    );
    assert_eq!(
        names(&inv, "acme/*"),
        ["acme-prod-1", "acme-prod-2", "acme-stage-1"]
    );
    assert_eq!(names(&inv, "g*/p?od"), ["globex-prod-1", "acme"]);
}

#[test]
fn glob_terms_match_node_names() {
    let inv = fleet();
    assert_eq!(
        names(&inv, "*-1"),
        ["acme-prod-1", "acme-stage-1", "globex-prod-1"]
    );
    assert_eq!(names(&inv, "acme-prod-?"), ["acme-prod-1", "acme-prod-2"]);
}

#[test]
fn bare_words_match_a_node_and_a_customer() {
    let inv = fleet();
    assert_eq!(names(&inv, "acme-stage-1"), ["acme-stage-1"]);
    // `acme` is both a customer and a node of globex: both match.
    assert_eq!(
        names(&inv, "acme"),
        ["acme-prod-1", "acme-prod-2", "acme-stage-1", "acme"]
    );
    assert_eq!(names(&inv, "globex"), ["globex-prod-1", "acme"]);
}

#[test]
fn union_minus_exclusions_in_file_order() {
    let inv = fleet();
    assert_eq!(
        names(&inv, "globex-prod-1,acme/stage"),
        ["acme-stage-1", "globex-prod-1"]
    );
    assert_eq!(names(&inv, "*/prod,!globex, !acme-prod-1"), ["acme-prod-2"]);
    assert_eq!(names(&inv, "!acme/*"), ["globex-prod-1", "acme"]);
    assert_eq!(names(&inv, "!tier=prod"), ["acme-stage-1"]);
}

#[test]
fn every_unmatched_term_is_named() {
    let inv = fleet();
    assert_eq!(
        inv.select("acme/prod,nope,!tier=qa,zz*"),
        Err(SelectError::NoMatch {
            terms: vec!["nope".into(), "!tier=qa".into(), "zz*".into()]
        })
    );
    let err = inv.select("nope,!tier=qa").expect_err("unmatched");
    assert_eq!(
        err.to_string(),
        "no node matches these terms: `nope`, `!tier=qa`"
    );
    assert_eq!(
        inv.select("x/y").expect_err("unmatched").to_string(),
        "no node matches `x/y`"
    );
}

#[test]
fn empty_results_patterns_and_terms_are_errors() {
    let inv = fleet();
    assert_eq!(
        inv.select("acme/prod,!tier=prod"),
        Err(SelectError::EmptySelection {
            pattern: "acme/prod,!tier=prod".into()
        })
    );
    assert_eq!(inv.select(""), Err(SelectError::EmptyPattern));
    assert_eq!(inv.select("  "), Err(SelectError::EmptyPattern));
    assert_eq!(
        inv.select("acme,,globex"),
        Err(SelectError::EmptyTerm {
            pattern: "acme,,globex".into(),
            position: 2
        })
    );
    assert!(matches!(
        inv.select("acme,!"),
        Err(SelectError::EmptyTerm { position: 2, .. })
    ));
    assert!(matches!(
        inv.select("=x"),
        Err(SelectError::InvalidTerm { .. })
    ));
    assert!(matches!(
        inv.select("a/b/c"),
        Err(SelectError::InvalidTerm { .. })
    ));
}
