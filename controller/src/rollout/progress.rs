//! What the controller knows of a rollout's targets while it watches: each node's own reports,
//! what the other targets' reports say of it (their agents publish in the cluster's Redis),
//! and what the state store held before. A node's own report is the truth for itself; for a
//! node that cannot be reached, the reachable nodes' reports stand in; a node nobody has heard
//! of for `lost_after` (neither its own report nor a change in what the others say of it) is
//! `lost`, until anything new of it is heard; a rollout does not end on a lost node last seen
//! in an upgrade step. A node that answers from disk because no agent daemon runs there is not
//! heard from until it is at its end (no daemon will write its outcome). Pure: every time comes in as an argument, so each rule is tested without a node.
//! Not the polling (`watch`) and not the printing.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use fleet_proto::{Asked, NodeProgress, Outcome, RolloutReport};

/// What one poll of one node brought.
#[derive(Debug, Clone)]
pub enum Polled {
    /// Its report on the rollout.
    Report(Box<RolloutReport>),
    /// It was reached but gave no report (it refused `rollout ID`): why.
    Refused(String),
    /// It could not be reached: why.
    Unreachable(String),
}

/// Something worth a progress line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node's step or outcome changed (its progress as merged).
    Progress(NodeProgress),
    /// A node could not be reached (or refused to report) after it had been, or at first.
    NotReached { node: String, why: String },
    /// A node reports again after it could not be reached.
    Reached { node: String },
    /// A node reports that no agent daemon runs there: nothing moves on it until one does.
    NoDaemon { node: String },
    /// A node cannot read its cluster's Redis.
    Redis { node: String, error: String },
    /// The failure flag was raised: no slot is granted after it.
    Halted(String),
    /// The cluster's agents took a control.
    Asked(Asked),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Progress(p) => {
                write!(f, "{}: ", p.node)?;
                match (&p.outcome, &p.step) {
                    (Some(o), _) => write!(f, "{o}")?,
                    (None, Some(step)) => f.write_str(step)?,
                    (None, None) => f.write_str("no progress reported")?,
                }
                if let Some(took) = took(p) {
                    write!(f, " (took {took})")?;
                }
                if let Some(reason) = &p.reason {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            Event::NotReached { node, why } => write!(f, "{node}: not reached: {why}"),
            Event::Reached { node } => write!(f, "{node}: reached again"),
            Event::NoDaemon { node } => write!(
                f,
                "{node}: no agent daemon runs there; the node takes no step until one does"
            ),
            Event::Redis { node, error } => {
                write!(f, "{node}: cannot read the cluster's Redis: {error}")
            }
            Event::Halted(why) => write!(f, "the rollout halted: {why}"),
            Event::Asked(asked) => write!(f, "the nodes took the control: {}", asked_word(*asked)),
        }
    }
}

/// How a control's action reads.
pub fn asked_word(asked: Asked) -> &'static str {
    match asked {
        Asked::Pause => "pause",
        Asked::Resume => "resume",
        Asked::Abort => "abort",
        Asked::AbortRollback => "abort --rollback",
    }
}

/// How long the node's step took, when it began and ended.
pub fn took(p: &NodeProgress) -> Option<String> {
    let (start, end) = (p.started_unix_ms?, p.ended_unix_ms?);
    let secs = end.saturating_sub(start) as f64 / 1000.0;
    Some(format!("{secs:.1} s"))
}

#[derive(Debug, Clone)]
struct Track {
    /// Its own last report of itself.
    own: Option<NodeProgress>,
    /// Whether the last poll brought its own report.
    reached: bool,
    /// When its own report last came (the watch's start before the first); a report read from
    /// disk, with no agent daemon running, counts only once the node is at its end.
    heard_at: Instant,
    /// Why the last poll brought no report.
    problem: Option<String>,
    /// The newest view of it in another target's report, with that report's time.
    others: Option<(u64, NodeProgress)>,
    /// When that view last changed.
    others_changed_at: Instant,
    /// What the state store held for it when the watch began.
    stored: Option<NodeProgress>,
    /// Set when nothing was heard of it for `lost_after`: why.
    lost: Option<String>,
    daemon: Option<bool>,
    redis_error: Option<String>,
    /// The step and outcome last announced.
    shown: Option<(Option<Outcome>, Option<String>)>,
    /// The progress last handed out to be recorded.
    recorded: Option<NodeProgress>,
}

impl Track {
    /// The upgrade step a view of it shows it in, if one does: its own last report's or
    /// another node's (what the store held only while no report said anything of it).
    fn step_seen(&self) -> Option<&str> {
        let heard = [self.own.as_ref(), self.others.as_ref().map(|(_, p)| p)];
        let views: Vec<&NodeProgress> = if heard.iter().flatten().any(|p| informs(p)) {
            heard.into_iter().flatten().collect()
        } else {
            self.stored.iter().collect()
        };
        views
            .into_iter()
            .find(|p| in_step(p))
            .and_then(|p| p.step.as_deref())
    }
}

/// The merged view of one rollout.
#[derive(Debug, Clone)]
pub struct Tracker {
    targets: Vec<String>,
    nodes: BTreeMap<String, Track>,
    asked: Option<(u64, Asked)>,
    /// The last control the state store records as handed out (and taken by a node).
    handed: Option<Asked>,
    halted: Option<String>,
    lost_after: Duration,
}

/// The start of the reason an agent gives a committed node that an abort with rollback cannot
/// take back (no release was active there before the rollout): it stays committed, for good.
const NOTHING_TO_ROLL_BACK_TO: &str = "aborted with rollback, but no release was active";

/// Whether a view of a node says anything.
fn informs(p: &NodeProgress) -> bool {
    p.outcome.is_some() || p.step.is_some() || p.started_unix_ms.is_some()
}

/// Whether a view of a node shows it in an upgrade step (not waiting, not ended).
fn in_step(p: &NodeProgress) -> bool {
    p.outcome.is_none() && p.step.as_deref().is_some_and(|s| !s.starts_with("waiting"))
}

fn same_view(a: &NodeProgress, b: &NodeProgress) -> bool {
    (
        a.outcome,
        &a.step,
        a.started_unix_ms,
        a.ended_unix_ms,
        a.epoch,
    ) == (
        b.outcome,
        &b.step,
        b.started_unix_ms,
        b.ended_unix_ms,
        b.epoch,
    )
}

impl Tracker {
    /// A tracker of `targets` (in upgrade order) from `now`, with what the store recorded.
    pub fn new(
        targets: &[String],
        stored: Vec<NodeProgress>,
        lost_after: Duration,
        now: Instant,
    ) -> Tracker {
        let nodes = targets
            .iter()
            .map(|node| {
                let track = Track {
                    own: None,
                    reached: false,
                    heard_at: now,
                    problem: None,
                    others: None,
                    others_changed_at: now,
                    stored: stored.iter().find(|p| &p.node == node).cloned(),
                    lost: None,
                    daemon: None,
                    redis_error: None,
                    shown: None,
                    recorded: None,
                };
                (node.clone(), track)
            })
            .collect::<BTreeMap<_, _>>();
        let mut tracker = Tracker {
            targets: targets.to_vec(),
            nodes,
            asked: None,
            handed: None,
            halted: None,
            lost_after,
        };
        // What the store holds is what was last announced and recorded.
        for node in targets {
            let merged = tracker.merged(node);
            if let Some(track) = tracker.nodes.get_mut(node) {
                track.recorded = track.stored.clone();
                if informs(&merged) {
                    track.shown = Some((merged.outcome, merged.step.clone()));
                }
            }
        }
        tracker
    }

    /// The last control the cluster's agents took, by the newest report that says.
    pub fn asked(&self) -> Option<Asked> {
        self.asked.map(|(_, a)| a)
    }

    /// Takes the last control the state store records as handed out: it stands until a report
    /// says which control the agents took.
    pub fn set_handed_out(&mut self, control: Option<Asked>) {
        self.handed = control;
    }

    /// The rollout's last control: the agents' word, else the store's.
    fn control(&self) -> Option<Asked> {
        self.asked().or(self.handed)
    }

    /// Whether the rollout was aborted with rollback (by the agents' reports or the store's
    /// record): its committed nodes are still to roll back, one slot at a time.
    fn rolling_back(&self) -> bool {
        self.asked() == Some(Asked::AbortRollback) || self.handed == Some(Asked::AbortRollback)
    }

    /// Whether `p` is a node's end in this rollout: an outcome, except `committed` while an
    /// abort with rollback has it still to roll back (only `rolled_back`, `rollback_failed`,
    /// `skipped` and `lost` are ends then, and a node that had no release to go back to).
    fn at_end(&self, p: &NodeProgress) -> bool {
        match p.outcome {
            None => false,
            Some(Outcome::Committed) if self.rolling_back() => p
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with(NOTHING_TO_ROLL_BACK_TO)),
            Some(_) => true,
        }
    }

    /// The failure flag, once a report raised it.
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    /// Why the last poll of `node` brought no report of its own, if it did not.
    pub fn problem(&self, node: &str) -> Option<&str> {
        self.nodes
            .get(node)
            .filter(|t| !t.reached)
            .and_then(|t| t.problem.as_deref())
    }

    /// Whether the last poll of `node` brought its own report.
    pub fn reached(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|t| t.reached)
    }

    /// Takes what one poll of `node` brought at `now`; returns what is worth a line.
    pub fn apply(&mut self, node: &str, polled: Polled, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        // A node answering from disk (no agent daemon runs there) says nothing new of itself
        // unless it is at its end: nothing moves there, and no daemon will write its outcome.
        let answers = match &polled {
            Polled::Report(r) => r.daemon || r.node(node).is_some_and(|p| self.at_end(p)),
            _ => false,
        };
        let Some(track) = self.nodes.get_mut(node) else {
            return events;
        };
        match polled {
            Polled::Report(report) => {
                if !track.reached && track.problem.is_some() {
                    events.push(Event::Reached { node: node.into() });
                }
                track.reached = true;
                track.problem = None;
                if answers {
                    track.heard_at = now;
                    track.lost = None;
                }
                track.own = report.node(node).cloned();
                if track.daemon != Some(report.daemon) && !report.daemon {
                    events.push(Event::NoDaemon { node: node.into() });
                }
                track.daemon = Some(report.daemon);
                if report.redis_error != track.redis_error {
                    if let Some(error) = &report.redis_error {
                        events.push(Event::Redis {
                            node: node.into(),
                            error: error.clone(),
                        });
                    }
                    track.redis_error = report.redis_error.clone();
                }
                let at = report.reported_at_unix_ms;
                for other in report.nodes.iter().filter(|p| p.node != node) {
                    if let Some(t) = self.nodes.get_mut(&other.node) {
                        let newer = t.others.as_ref().is_none_or(|(seen, _)| at >= *seen);
                        if newer && informs(other) {
                            let changed =
                                t.others.as_ref().is_none_or(|(_, p)| !same_view(p, other));
                            if changed {
                                // Something new of it: it is not lost (for now).
                                t.others_changed_at = now;
                                t.lost = None;
                            }
                            t.others = Some((at, other.clone()));
                        }
                    }
                }
                if let Some(asked) = report.asked
                    && self.asked.is_none_or(|(seen, _)| at >= seen)
                {
                    if self.asked.map(|(_, a)| a) != Some(asked) {
                        events.push(Event::Asked(asked));
                    }
                    self.asked = Some((at, asked));
                }
                if let (None, Some(why)) = (&self.halted, &report.halted) {
                    events.push(Event::Halted(why.clone()));
                    self.halted = Some(why.clone());
                }
            }
            Polled::Refused(why) | Polled::Unreachable(why) => {
                if track.reached || track.problem.is_none() {
                    events.push(Event::NotReached {
                        node: node.into(),
                        why: why.clone(),
                    });
                }
                track.reached = false;
                track.problem = Some(why);
            }
        }
        events.extend(self.tick(now));
        events
    }

    /// Marks `lost` the nodes nobody heard of for `lost_after` by `now`, and announces every
    /// node whose step or outcome changed.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let lost_after = self.lost_after;
        let targets = self.targets.clone();
        for node in &targets {
            let at_end = self.at_end(&self.merged(node));
            let Some(t) = self.nodes.get_mut(node) else {
                continue;
            };
            let no_daemon = t.reached && t.daemon == Some(false);
            let silent = (!t.reached || no_daemon)
                && now.saturating_duration_since(t.heard_at) >= lost_after
                && now.saturating_duration_since(t.others_changed_at) >= lost_after;
            if !at_end && silent && t.lost.is_none() {
                let why = if no_daemon {
                    "its agent daemon is not running (the node answers from disk; nothing moves there)"
                } else {
                    t.problem.as_deref().unwrap_or("no answer")
                };
                t.lost = Some(format!(
                    "not heard of for {} s: {why}",
                    lost_after.as_secs()
                ));
            }
        }
        let mut events = Vec::new();
        for node in &targets {
            let merged = self.merged(node);
            let Some(t) = self.nodes.get_mut(node) else {
                continue;
            };
            let now_shown = (merged.outcome, merged.step.clone());
            let before = t.shown.clone();
            if informs(&merged) && before.as_ref() != Some(&now_shown) {
                t.shown = Some(now_shown);
                events.push(Event::Progress(merged));
            }
        }
        events
    }

    /// The progress of `node` as the controller believes it now.
    pub fn merged(&self, node: &str) -> NodeProgress {
        let Some(t) = self.nodes.get(node) else {
            return NodeProgress::new(node);
        };
        let others = t.others.as_ref().map(|(_, p)| p);
        let view = if t.reached {
            t.own.as_ref()
        } else {
            let with_outcome = |p: &&NodeProgress| p.outcome.is_some();
            others
                .filter(with_outcome)
                .or(t.own.as_ref().filter(with_outcome))
                .or(others.filter(|p| informs(p)))
                .or(t.own.as_ref())
        };
        let mut p = view
            .filter(|p| informs(p))
            .or(t.stored.as_ref().filter(|p| informs(p)))
            .cloned()
            .unwrap_or_else(|| NodeProgress::new(node));
        p.node = node.to_owned();
        if let Some(why) = &t.lost
            && !self.at_end(&p)
        {
            p.outcome = Some(Outcome::Lost);
            p.reason = Some(why.clone());
        }
        p
    }

    /// Every target's merged progress, in upgrade order.
    pub fn nodes(&self) -> Vec<NodeProgress> {
        self.targets.iter().map(|n| self.merged(n)).collect()
    }

    /// The nodes whose merged progress changed since the last call: to be recorded.
    pub fn changed_since_recorded(&mut self) -> Vec<NodeProgress> {
        let mut out = Vec::new();
        for node in self.targets.clone() {
            let merged = self.merged(&node);
            if let Some(t) = self.nodes.get_mut(&node)
                && informs(&merged)
                && t.recorded.as_ref() != Some(&merged)
            {
                t.recorded = Some(merged.clone());
                out.push(merged);
            }
        }
        out
    }

    /// Once every target is at its end (an outcome; after an abort with rollback, not
    /// `committed` while the node is still to roll back): how the rollout ended (`committed`,
    /// `aborted` or `failed`) and why.
    pub fn ended(&self) -> Option<(&'static str, Option<String>)> {
        let nodes = self.nodes();
        if nodes.iter().any(|p| !self.at_end(p)) {
            return None;
        }
        // A node marked lost while a view of it shows it in a step may still be in it (a long
        // gate, a partition): lost is an end only for a node last seen waiting or ended.
        // (What the store held counts only while no report said anything of it.)
        let lost_in_step = self
            .nodes
            .values()
            .any(|t| t.lost.is_some() && t.step_seen().is_some());
        if lost_in_step {
            return None;
        }
        let rolling_back = self.rolling_back();
        // A node's reason is left out where it only repeats the failure flag.
        let repeats = |reason: &str| {
            self.halted
                .as_deref()
                .is_some_and(|h| h.contains(reason) || reason.contains(h))
        };
        let others: Vec<String> = nodes
            .iter()
            .filter(|p| rolling_back || p.outcome != Some(Outcome::Committed))
            .map(|p| {
                let outcome = p.outcome.map_or("?", Outcome::as_str);
                match &p.reason {
                    Some(r) if !repeats(r) => format!("{} {outcome}: {r}", p.node),
                    _ => format!("{} {outcome}", p.node),
                }
            })
            .collect();
        if others.is_empty() && !rolling_back {
            return Some(("committed", None));
        }
        let mut why = Vec::new();
        if let Some(halted) = &self.halted {
            why.push(format!("halted: {halted}"));
        }
        why.extend(others);
        let state = match self.control() {
            _ if rolling_back => "aborted",
            Some(Asked::Abort | Asked::AbortRollback) => "aborted",
            _ => "failed",
        };
        Some((state, Some(why.join("; "))))
    }

    /// Whether an abort just handed out (`set_handed_out`, every target's answer applied)
    /// may end the rollout now: when every target is at its end, as [`Tracker::ended`] says;
    /// else when each target not at its end could not be reached (or refused to report) and
    /// no view of it shows it in an upgrade step, nor will it roll back (committed, after an
    /// abort with rollback a node took). `Ok` holds the end state and why, `Err` why not.
    pub fn abort_ends(&self) -> Result<(&'static str, Option<String>), String> {
        if let Some(end) = self.ended() {
            return Ok(end);
        }
        let some_took = self.nodes.values().any(|t| t.reached);
        let mut unreached = Vec::new();
        let mut open = Vec::new();
        for node in &self.targets {
            let (Some(t), p) = (self.nodes.get(node), self.merged(node)) else {
                continue;
            };
            if self.at_end(&p) {
                continue;
            }
            if let Some(step) = t.step_seen() {
                open.push(format!("{node} is in its step `{step}`"));
            } else if t.reached {
                let what = match (&p.outcome, &p.step) {
                    (Some(Outcome::Committed), _) => "is still to roll back".to_owned(),
                    (_, Some(step)) => format!("has not ended its part ({step})"),
                    _ => "has not ended its part".to_owned(),
                };
                open.push(format!("{node} {what}"));
            } else if p.outcome == Some(Outcome::Committed) && some_took {
                open.push(format!(
                    "{node} cannot be reached, and is committed: it rolls back once its agent reads the control"
                ));
            } else {
                unreached.push(node.as_str());
            }
        }
        if !open.is_empty() {
            return Err(open.join("; "));
        }
        let mut why = format!(
            "aborted while {} could not be reached (their part was not seen to end)",
            unreached.join(", ")
        );
        if !some_took {
            why.push_str("; no node took the abort");
        }
        Ok(("aborted", Some(why)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START_MS: u64 = 1_000_000;

    fn targets() -> Vec<String> {
        ["n1", "n2", "n3"].map(String::from).to_vec()
    }

    fn progress(node: &str, outcome: Option<Outcome>, step: Option<&str>) -> NodeProgress {
        NodeProgress {
            outcome,
            step: step.map(str::to_owned),
            reason: None,
            started_unix_ms: step.map(|_| START_MS),
            ended_unix_ms: outcome.map(|_| START_MS + 31_000),
            ..NodeProgress::new(node)
        }
    }

    fn report(by: &str, at: u64, nodes: Vec<NodeProgress>) -> Polled {
        Polled::Report(Box::new(RolloutReport {
            rollout: "r1".into(),
            cluster: "acme/prod".into(),
            version: "2.0.0".into(),
            reported_by: by.into(),
            nodes,
            asked: None,
            halted: None,
            redis_error: None,
            daemon: true,
            reported_at_unix_ms: at,
        }))
    }

    fn lines(events: &[Event]) -> Vec<String> {
        events.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_node_is_the_truth_for_itself_and_others_stand_in_when_it_cannot_be_reached() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(&targets(), Vec::new(), Duration::from_secs(60), t0);
        // n1 says it drains; what it says of n2 counts only while n2 is not reached.
        let events = tr.apply(
            "n1",
            report(
                "n1",
                10,
                vec![
                    progress("n1", None, Some("drain")),
                    progress("n2", None, Some("waiting: n1 first")),
                    NodeProgress::new("n3"),
                ],
            ),
            t0,
        );
        assert_eq!(
            lines(&events),
            ["n1: drain", "n2: waiting: n1 first"],
            "n3 said nothing yet"
        );
        // n2's own report wins over n1's view of it.
        let events = tr.apply(
            "n2",
            report(
                "n2",
                11,
                vec![
                    progress("n1", None, Some("drain")),
                    progress("n2", None, Some("waiting: a slot")),
                ],
            ),
            t0,
        );
        assert_eq!(lines(&events), ["n2: waiting: a slot"]);
        assert_eq!(tr.merged("n2").step.as_deref(), Some("waiting: a slot"));
        // n2 goes silent; n1 later says n2 committed: that stands in for it.
        tr.apply("n2", Polled::Unreachable("connection refused".into()), t0);
        let events = tr.apply(
            "n1",
            report(
                "n1",
                20,
                vec![
                    progress("n1", Some(Outcome::Committed), Some("gate")),
                    progress("n2", Some(Outcome::Committed), Some("gate")),
                ],
            ),
            t0,
        );
        assert_eq!(
            lines(&events),
            ["n1: committed (took 31.0 s)", "n2: committed (took 31.0 s)"]
        );
        // An older report than the one read does not take a view back.
        tr.apply(
            "n3",
            report("n3", 15, vec![progress("n2", None, Some("drain"))]),
            t0,
        );
        assert_eq!(tr.merged("n2").outcome, Some(Outcome::Committed));
        assert_eq!(tr.ended(), None, "n3 has no outcome");
    }

    #[test]
    fn a_node_nobody_hears_of_is_lost_after_the_bound_and_found_again() {
        let t0 = Instant::now();
        let after = Duration::from_secs(30);
        let mut tr = Tracker::new(&["n1".to_owned(), "n2".to_owned()], Vec::new(), after, t0);
        let events = tr.apply("n2", Polled::Unreachable("no route to host".into()), t0);
        assert_eq!(lines(&events), ["n2: not reached: no route to host"]);
        // Again: no second line.
        assert!(
            tr.apply("n2", Polled::Unreachable("no route to host".into()), t0)
                .is_empty()
        );
        // n1 keeps saying new things of n2: it is alive, not lost.
        let t1 = t0 + Duration::from_secs(25);
        tr.apply(
            "n1",
            report(
                "n1",
                1,
                vec![
                    progress("n1", None, Some("waiting: n2")),
                    progress("n2", None, Some("gate")),
                ],
            ),
            t1,
        );
        assert!(tr.tick(t0 + Duration::from_secs(40)).is_empty());
        assert_eq!(tr.merged("n2").outcome, None);
        // Nothing new of it for the bound: lost, with why.
        let events = tr.tick(t1 + after);
        assert_eq!(
            lines(&events),
            ["n2: lost: not heard of for 30 s: no route to host"]
        );
        assert_eq!(
            tr.changed_since_recorded().len(),
            2,
            "both changed since the start"
        );
        // It reports again: its own word replaces lost.
        let t2 = t1 + after + Duration::from_secs(1);
        let events = tr.apply(
            "n2",
            report(
                "n2",
                5,
                vec![progress("n2", Some(Outcome::RolledBack), Some("rollback"))],
            ),
            t2,
        );
        assert_eq!(
            lines(&events),
            ["n2: reached again", "n2: rolled_back (took 31.0 s)"]
        );
        assert_eq!(
            tr.changed_since_recorded()
                .iter()
                .map(|p| p.node.as_str())
                .collect::<Vec<_>>(),
            ["n2"]
        );
        assert!(
            tr.changed_since_recorded().is_empty(),
            "nothing changed since"
        );
    }

    #[test]
    fn the_rollout_ends_once_every_target_has_an_outcome() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(&targets(), Vec::new(), Duration::from_secs(60), t0);
        let all = |o: [Outcome; 3]| {
            vec![
                progress("n1", Some(o[0]), Some("gate")),
                progress("n2", Some(o[1]), Some("gate")),
                progress("n3", Some(o[2]), Some("gate")),
            ]
        };
        tr.apply("n1", report("n1", 1, all([Outcome::Committed; 3])), t0);
        for n in ["n2", "n3"] {
            tr.apply(n, Polled::Unreachable("down".into()), t0);
        }
        assert_eq!(tr.ended(), Some(("committed", None)));

        let mut tr = Tracker::new(&targets(), Vec::new(), Duration::from_secs(60), t0);
        let mut r = report(
            "n1",
            1,
            all([Outcome::RolledBack, Outcome::Skipped, Outcome::Skipped]),
        );
        if let Polled::Report(r) = &mut r {
            r.halted = Some("n1: failed its health gate: exit 1".into());
            r.nodes[0].reason = Some("failed its health gate: exit 1".into());
            r.nodes[1].reason =
                Some("the rollout halted: n1: failed its health gate: exit 1".into());
            r.nodes[2].reason = Some("the deadline passed".into());
        }
        let events = tr.apply("n1", r, t0);
        assert!(
            lines(&events)
                .contains(&"the rollout halted: n1: failed its health gate: exit 1".to_owned()),
            "{events:?}"
        );
        tr.apply("n2", Polled::Refused("unknown rollout".into()), t0);
        tr.apply("n3", Polled::Refused("unknown rollout".into()), t0);
        let (state, why) = tr.ended().expect("ended");
        assert_eq!(state, "failed");
        assert_eq!(
            why.as_deref(),
            Some(
                "halted: n1: failed its health gate: exit 1; n1 rolled_back; n2 skipped; n3 skipped: the deadline passed"
            ),
            "a reason that repeats the flag is said once"
        );

        let mut tr = Tracker::new(&targets(), Vec::new(), Duration::from_secs(60), t0);
        let mut r = report(
            "n1",
            1,
            all([Outcome::Committed, Outcome::Skipped, Outcome::Skipped]),
        );
        if let Polled::Report(r) = &mut r {
            r.asked = Some(Asked::Abort);
        }
        let events = tr.apply("n1", r, t0);
        assert!(lines(&events).contains(&"the nodes took the control: abort".to_owned()));
        assert_eq!(tr.asked(), Some(Asked::Abort));
        assert_eq!(tr.ended().map(|(s, _)| s), Some("aborted"));
    }

    #[test]
    fn what_the_store_held_stands_until_a_report_says_more() {
        let t0 = Instant::now();
        let mut skipped = progress("n3", Some(Outcome::Skipped), None);
        skipped.reason = Some("refused its order: not_staged".into());
        let stored = vec![skipped.clone(), progress("n1", None, Some("drain"))];
        let mut tr = Tracker::new(&targets(), stored, Duration::from_secs(60), t0);
        assert_eq!(tr.merged("n3"), skipped);
        // Already announced and recorded: no line and no write for it at the start.
        assert!(tr.tick(t0).is_empty());
        assert!(tr.changed_since_recorded().is_empty());
        // n3 answers that it knows no such rollout: the stored outcome still stands.
        tr.apply("n3", Polled::Refused("unknown rollout r1".into()), t0);
        assert_eq!(tr.merged("n3").outcome, Some(Outcome::Skipped));
        assert_eq!(tr.problem("n3"), Some("unknown rollout r1"));
        // n1's own report moves it on.
        let events = tr.apply(
            "n1",
            report("n1", 3, vec![progress("n1", None, Some("gate"))]),
            t0,
        );
        assert_eq!(lines(&events), ["n1: gate"]);
    }

    #[test]
    fn a_node_without_a_daemon_and_redis_trouble_are_said_once() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(&targets(), Vec::new(), Duration::from_secs(60), t0);
        let mut r = report("n1", 1, vec![NodeProgress::new("n1")]);
        if let Polled::Report(r) = &mut r {
            r.daemon = false;
            r.redis_error = Some("connection refused".into());
        }
        let events = tr.apply("n1", r.clone(), t0);
        assert_eq!(
            lines(&events),
            [
                "n1: no agent daemon runs there; the node takes no step until one does",
                "n1: cannot read the cluster's Redis: connection refused"
            ]
        );
        assert!(tr.apply("n1", r, t0).is_empty());
    }

    fn asking(mut polled: Polled, asked: Asked) -> Polled {
        if let Polled::Report(r) = &mut polled {
            r.asked = Some(asked);
        }
        polled
    }

    fn reasoned(mut p: NodeProgress, reason: &str) -> NodeProgress {
        p.reason = Some(reason.to_owned());
        p
    }
    #[test]
    fn an_abort_with_rollback_ends_only_once_the_committed_nodes_rolled_back() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(&targets(), Vec::new(), Duration::from_secs(60), t0);
        let committed = |n: &str| progress(n, Some(Outcome::Committed), Some("gate"));
        let all = vec![committed("n1"), committed("n2"), committed("n3")];
        for n in ["n1", "n2", "n3"] {
            let r = asking(report(n, 1, all.clone()), Asked::AbortRollback);
            tr.apply(n, r, t0);
        }
        assert_eq!(tr.asked(), Some(Asked::AbortRollback));
        // Every node committed, but each is still to roll back, one slot at a time.
        assert_eq!(
            tr.ended(),
            None,
            "committed is not an end under abort --rollback"
        );
        // n1 rolls back; n2 is in its rollback step; n3 waits for a slot.
        let back = |n: &str| {
            reasoned(
                progress(n, Some(Outcome::RolledBack), Some("rollback")),
                "aborted with rollback: back to 1.0.0",
            )
        };
        let now = vec![
            back("n1"),
            progress("n2", None, Some("drain")),
            committed("n3"),
        ];
        for n in ["n1", "n2", "n3"] {
            tr.apply(
                n,
                asking(report(n, 2, now.clone()), Asked::AbortRollback),
                t0,
            );
        }
        assert_eq!(tr.ended(), None);
        // n2 rolled back, n3's rollback failed: every node is at its end.
        let failed = reasoned(
            progress("n3", Some(Outcome::RollbackFailed), Some("rollback")),
            "the abort's rollback to 1.0.0 failed: exit 1",
        );
        let last = vec![back("n1"), back("n2"), failed];
        for n in ["n1", "n2", "n3"] {
            tr.apply(
                n,
                asking(report(n, 3, last.clone()), Asked::AbortRollback),
                t0,
            );
        }
        let (state, why) = tr.ended().expect("ended");
        assert_eq!(state, "aborted");
        let why = why.expect("why");
        assert!(
            why.contains("n3 rollback_failed: the abort's rollback to 1.0.0 failed"),
            "{why}"
        );
    }

    #[test]
    fn the_stores_abort_with_rollback_stands_until_the_reports_say_and_a_node_with_nothing_to_go_back_to_ends()
     {
        let t0 = Instant::now();
        let committed = |n: &str| progress(n, Some(Outcome::Committed), Some("gate"));
        // A watch begun afresh: the store holds every node committed and the abort handed out.
        let stored = vec![committed("n1"), committed("n2"), committed("n3")];
        let mut tr = Tracker::new(&targets(), stored, Duration::from_secs(60), t0);
        tr.set_handed_out(Some(Asked::AbortRollback));
        tr.tick(t0);
        assert_eq!(
            tr.ended(),
            None,
            "no report yet, and the store says they roll back"
        );
        // n1 rolled back; n2 and n3 had no release before the rollout: they stay committed.
        let nothing = |n: &str| {
            reasoned(
                committed(n),
                "aborted with rollback, but no release was active here before the rollout",
            )
        };
        let back = reasoned(
            progress("n1", Some(Outcome::RolledBack), Some("rollback")),
            "aborted with rollback: back to 1.0.0",
        );
        let all = vec![back, nothing("n2"), nothing("n3")];
        for n in ["n1", "n2", "n3"] {
            tr.apply(n, report(n, 1, all.clone()), t0);
        }
        let (state, why) = tr.ended().expect("every node is at its end");
        assert_eq!(state, "aborted", "{why:?}");
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("n2 committed: aborted with rollback, but no release")),
            "{why:?}"
        );
    }

    #[test]
    fn a_lost_node_is_found_again_when_another_view_of_it_changes() {
        let t0 = Instant::now();
        let after = Duration::from_secs(30);
        let mut tr = Tracker::new(&["n1".to_owned(), "n2".to_owned()], Vec::new(), after, t0);
        tr.apply("n2", Polled::Unreachable("no route to host".into()), t0);
        let n1_done = progress("n1", Some(Outcome::Committed), Some("gate"));
        let says = |at: u64, n2: NodeProgress| report("n1", at, vec![n1_done.clone(), n2]);
        // n1 sees n2 in its gate; nothing new of it for the bound: lost (as shown)...
        tr.apply("n1", says(1, progress("n2", None, Some("gate"))), t0);
        tr.tick(t0 + after);
        assert_eq!(tr.merged("n2").outcome, Some(Outcome::Lost));
        // ...but the last view of it is a step in progress: the rollout does not end on it.
        assert_eq!(tr.ended(), None, "n2 may still be in its gate");
        // n1 now sees n2 in its smoke flow: n2 moves, so it is not lost.
        let mut smoke = progress("n2", None, Some("smoke"));
        smoke.epoch = Some(7);
        tr.apply("n1", says(2, smoke), t0 + after + Duration::from_secs(5));
        assert_eq!(tr.merged("n2").outcome, None, "a changed view clears lost");
        assert_eq!(tr.merged("n2").step.as_deref(), Some("smoke"));
        assert_eq!(tr.ended(), None);
        // Nothing new again for the bound: lost again, and still not an end while in a step.
        tr.tick(t0 + after * 2 + Duration::from_secs(5));
        assert_eq!(tr.merged("n2").outcome, Some(Outcome::Lost));
        assert_eq!(tr.ended(), None);
        // A node last seen waiting and then never heard of: lost, and that is final.
        let t1 = t0 + after * 3;
        tr.apply(
            "n1",
            says(3, progress("n2", None, Some("waiting: a slot"))),
            t1,
        );
        assert_eq!(tr.merged("n2").outcome, None);
        tr.tick(t1 + after);
        assert_eq!(tr.merged("n2").outcome, Some(Outcome::Lost));
        assert_eq!(tr.ended().map(|(s, _)| s), Some("failed"));
    }

    #[test]
    fn a_node_whose_agent_daemon_is_down_is_lost_after_the_bound_and_found_when_it_runs() {
        let t0 = Instant::now();
        let after = Duration::from_secs(30);
        let mut tr = Tracker::new(&["n1".to_owned(), "n2".to_owned()], Vec::new(), after, t0);
        let n1_done = progress("n1", Some(Outcome::Committed), Some("gate"));
        tr.apply("n1", report("n1", 1, vec![n1_done.clone()]), t0);
        // n2 answers over SSH, from disk: no daemon runs there, so nothing moves on it.
        let from_disk = |at: u64| {
            let mut r = report(
                "n2",
                at,
                vec![progress("n2", None, Some("waiting: n1 first"))],
            );
            if let Polled::Report(r) = &mut r {
                r.daemon = false;
            }
            r
        };
        for s in [0, 10, 20, 29] {
            tr.apply("n2", from_disk(s), t0 + Duration::from_secs(s));
        }
        assert_eq!(tr.merged("n2").outcome, None, "not yet the bound");
        let events = tr.apply("n2", from_disk(30), t0 + after);
        let lost = tr.merged("n2");
        assert_eq!(lost.outcome, Some(Outcome::Lost), "{events:?}");
        assert!(
            lost.reason
                .as_deref()
                .is_some_and(|r| r.contains("agent daemon is not running")),
            "{lost:?}"
        );
        assert_eq!(tr.ended().map(|(s, _)| s), Some("failed"));
        // Its daemon runs again: it is back.
        let mut r = report(
            "n2",
            40,
            vec![progress("n2", None, Some("waiting: a slot"))],
        );
        if let Polled::Report(r) = &mut r {
            r.daemon = true;
        }
        tr.apply("n2", r, t0 + after + Duration::from_secs(10));
        assert_eq!(tr.merged("n2").outcome, None);
        assert_eq!(tr.ended(), None);
    }

    #[test]
    fn an_abort_ends_a_rollout_whose_targets_all_ended_or_cannot_be_reached_and_none_is_in_a_step()
    {
        let t0 = Instant::now();
        let fresh = |stored: Vec<NodeProgress>, asked: Asked| {
            let mut tr = Tracker::new(&targets(), stored, Duration::MAX, t0);
            tr.set_handed_out(Some(asked));
            tr
        };
        // No target answers: the abort ends it, saying so.
        let mut tr = fresh(Vec::new(), Asked::Abort);
        for n in ["n1", "n2", "n3"] {
            tr.apply(n, Polled::Unreachable("connection timed out".into()), t0);
        }
        let (state, why) = tr.abort_ends().expect("ends");
        let why = why.expect("why");
        assert_eq!(state, "aborted");
        assert!(why.contains("n1, n2, n3 could not be reached"), "{why}");
        assert!(why.contains("no node took the abort"), "{why}");

        // A reachable node in a step: never ended under it.
        let mut tr = fresh(Vec::new(), Asked::Abort);
        let r = asking(
            report("n1", 1, vec![progress("n1", None, Some("drain"))]),
            Asked::Abort,
        );
        tr.apply("n1", r, t0);
        for n in ["n2", "n3"] {
            tr.apply(n, Polled::Unreachable("down".into()), t0);
        }
        let why = tr.abort_ends().expect_err("n1 drains");
        assert!(why.contains("n1 is in its step `drain`"), "{why}");

        // An unreachable node another one sees in a step: not ended either.
        let mut tr = fresh(Vec::new(), Asked::Abort);
        let seen = vec![
            progress("n1", Some(Outcome::Committed), Some("gate")),
            progress("n2", None, Some("switch")),
        ];
        tr.apply("n1", asking(report("n1", 1, seen), Asked::Abort), t0);
        for n in ["n2", "n3"] {
            tr.apply(n, Polled::Unreachable("down".into()), t0);
        }
        let why = tr.abort_ends().expect_err("n2 switches");
        assert!(why.contains("n2 is in its step `switch`"), "{why}");

        // Ended or unreachable and seen waiting (or not at all): ended, aborted.
        let mut tr = fresh(Vec::new(), Asked::Abort);
        let seen = vec![
            reasoned(
                progress("n1", Some(Outcome::Skipped), None),
                "the rollout was aborted",
            ),
            progress("n2", None, Some("waiting: n1 first")),
        ];
        tr.apply("n1", asking(report("n1", 1, seen), Asked::Abort), t0);
        for n in ["n2", "n3"] {
            tr.apply(n, Polled::Unreachable("down".into()), t0);
        }
        let (state, why) = tr.abort_ends().expect("ends");
        let why = why.expect("why");
        assert_eq!(state, "aborted");
        assert!(why.contains("n2, n3 could not be reached"), "{why}");
        assert!(!why.contains("no node took"), "{why}");

        // With rollback, a committed node is still to roll back, reached or not.
        let committed = |n: &str| progress(n, Some(Outcome::Committed), Some("gate"));
        let mut tr = fresh(vec![committed("n2")], Asked::AbortRollback);
        let seen = vec![committed("n1")];
        tr.apply(
            "n1",
            asking(report("n1", 1, seen), Asked::AbortRollback),
            t0,
        );
        for n in ["n2", "n3"] {
            tr.apply(n, Polled::Unreachable("down".into()), t0);
        }
        let why = tr.abort_ends().expect_err("rollbacks to come");
        assert!(why.contains("n1 is still to roll back"), "{why}");
        assert!(
            why.contains("n2 cannot be reached, and is committed"),
            "{why}"
        );
    }
}
