//! How a node's answers read in the summary tables: the cells of `fleet status` (the agent
//! daemon, its server and health, restarts, heartbeat, releases, disk) and of `activate` /
//! `rollback` (what switched and what happened to the server), with short ages and errors cut
//! to fit a cell. Not the table layout (`fanout::table`) and not the JSON: that is the answer
//! as the agent gave it.

use fleet_proto::{Status, SwitchOutcome, Switched};

/// The columns of `fleet status`.
pub const STATUS_HEADERS: [&str; 9] = [
    "NODE",
    "AGENT",
    "SERVER",
    "HEALTH",
    "ACTIVE",
    "RESTARTS",
    "HEARTBEAT",
    "STAGED",
    "FREE",
];

/// The columns of `fleet activate` and `fleet rollback`.
pub const SWITCH_HEADERS: [&str; 4] = ["NODE", "ACTIVE", "RESULT", "SERVER"];

/// What a node's `Switched` says about its server when no daemon ran the step.
pub const NOT_RESTARTED: &str = "no agent daemon runs: current switched, no server was restarted";

/// The longest error text a cell shows (the whole of it is in `--json`).
const CELL_TEXT: usize = 34;

/// The cells of a status row after NODE, in [`STATUS_HEADERS`] order. A node without a
/// running daemon shows `not running` and `-` in the daemon's columns.
pub fn status_cells(s: &Status) -> Vec<String> {
    let dash = || "-".to_owned();
    let (agent, server, health, restarts, heartbeat) = match &s.daemon {
        None => ("not running".to_owned(), dash(), dash(), dash(), dash()),
        Some(d) => {
            let mut about = Vec::new();
            if let Some(pid) = d.server_pid {
                about.push(format!("pid {pid}"));
            }
            if let Some(ms) = d.restart_in_ms {
                about.push(format!("restart in {}", age(ms)));
            }
            let server = if about.is_empty() {
                d.server.to_string()
            } else {
                format!("{} ({})", d.server, about.join(", "))
            };
            let health = match (d.healthy_for_ms, &d.health_error) {
                (Some(ms), _) => format!("healthy {}", age(ms)),
                (None, Some(error)) => shorten(error, CELL_TEXT),
                (None, None) => dash(),
            };
            let restarts = match &d.last_exit {
                Some(exit) => shorten(&format!("{} (last: {exit})", d.restarts), CELL_TEXT),
                None => d.restarts.to_string(),
            };
            let heartbeat = match (&d.redis_error, d.heartbeat_age_ms) {
                (Some(error), _) => shorten(&format!("redis: {error}"), CELL_TEXT),
                (None, Some(ms)) => age(ms),
                (None, None) => "none".to_owned(),
            };
            ("running".to_owned(), server, health, restarts, heartbeat)
        }
    };
    let mut active = s.active.clone().unwrap_or_else(dash);
    // The server may run another release than `current` names (during or after a failed step).
    if let Some(runs) = s.daemon.as_ref().and_then(|d| d.server_release.as_ref())
        && Some(runs) != s.active.as_ref()
    {
        active = format!("{active} (server runs {runs})");
    }
    let staged = if s.staged.is_empty() {
        dash()
    } else {
        s.staged.join(",")
    };
    vec![
        agent,
        server,
        health,
        active,
        restarts,
        heartbeat,
        staged,
        format!("{:.1} GiB", s.free_bytes as f64 / (1u64 << 30) as f64),
    ]
}

/// The cells of a switch row after NODE, in [`SWITCH_HEADERS`] order.
pub fn switch_cells(s: &Switched) -> Vec<String> {
    let result = if s.changed { "switched" } else { "unchanged" };
    let server = match (s.server, s.changed) {
        (SwitchOutcome::Committed, _) => "committed",
        (SwitchOutcome::NotRestarted, true) => NOT_RESTARTED,
        (SwitchOutcome::NotRestarted, false) => "no agent daemon runs: no server was restarted",
    };
    vec![s.active.clone(), result.to_owned(), server.to_owned()]
}

/// A duration as a short age: `12s`, `5m07s`, `3h05m`, `2d04h`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The first line of `text`, cut to `max` characters with `…` when longer.
pub fn shorten(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    if line.chars().count() <= max && !text.trim().contains('\n') {
        return line.to_owned();
    }
    let kept: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", kept.trim_end())
}

#[cfg(test)]
mod tests {
    use fleet_proto::{ServerState, Supervision};

    use super::*;

    fn status(daemon: Option<Supervision>) -> Status {
        Status {
            agent_version: "0.1.0".into(),
            active: Some("1.1.0".into()),
            previous: Some("1.0.0".into()),
            staged: vec!["1.0.0".into(), "1.1.0".into()],
            free_bytes: 12 << 30,
            daemon,
        }
    }

    fn supervision(server: ServerState) -> Supervision {
        Supervision {
            node: "acme-1".into(),
            agent_pid: 100,
            agent_uptime_ms: 600_000,
            server,
            server_pid: None,
            server_release: None,
            restarts: 0,
            last_exit: None,
            healthy_for_ms: None,
            health_latency_ms: None,
            health_error: None,
            restart_in_ms: None,
            heartbeat_age_ms: None,
            redis_error: None,
            step: None,
            last_step: None,
        }
    }

    fn row(s: &Status) -> Vec<(&'static str, String)> {
        STATUS_HEADERS[1..]
            .iter()
            .copied()
            .zip(status_cells(s))
            .collect()
    }

    #[test]
    fn a_healthy_server_shows_its_pid_health_age_and_heartbeat() {
        let s = status(Some(Supervision {
            server_pid: Some(4242),
            server_release: Some("1.1.0".into()),
            restarts: 1,
            healthy_for_ms: Some(12_400),
            health_latency_ms: Some(2),
            heartbeat_age_ms: Some(2_100),
            ..supervision(ServerState::Healthy)
        }));
        assert_eq!(
            row(&s),
            [
                ("AGENT", "running".to_owned()),
                ("SERVER", "healthy (pid 4242)".into()),
                ("HEALTH", "healthy 12s".into()),
                ("ACTIVE", "1.1.0".into()),
                ("RESTARTS", "1".into()),
                ("HEARTBEAT", "2s".into()),
                ("STAGED", "1.0.0,1.1.0".into()),
                ("FREE", "12.0 GiB".into()),
            ]
        );
    }

    #[test]
    fn a_crashlooping_server_shows_its_last_exit_backoff_and_redis_trouble() {
        let s = status(Some(Supervision {
            server_release: Some("1.0.0".into()),
            restarts: 7,
            last_exit: Some("exit status 1".into()),
            health_error: Some(
                "connection refused (os error 111) while asking http://127.0.0.1:8080/health"
                    .into(),
            ),
            restart_in_ms: Some(8_000),
            heartbeat_age_ms: Some(95_000),
            redis_error: Some("Connection refused (os error 111)".into()),
            ..supervision(ServerState::Crashlooping)
        }));
        assert_eq!(
            row(&s),
            [
                ("AGENT", "running".to_owned()),
                ("SERVER", "crashlooping (restart in 8s)".into()),
                ("HEALTH", "connection refused (os error 111)…".into()),
                ("ACTIVE", "1.1.0 (server runs 1.0.0)".into()),
                ("RESTARTS", "7 (last: exit status 1)".into()),
                ("HEARTBEAT", "redis: Connection refused (os err…".into()),
                ("STAGED", "1.0.0,1.1.0".into()),
                ("FREE", "12.0 GiB".into()),
            ]
        );
        for cell in status_cells(&s) {
            assert!(cell.chars().count() <= CELL_TEXT, "{cell:?} is cut to fit");
        }
    }

    #[test]
    fn a_node_without_a_daemon_says_not_running() {
        let mut s = status(None);
        s.staged.clear();
        s.active = None;
        assert_eq!(
            row(&s),
            [
                ("AGENT", "not running".to_owned()),
                ("SERVER", "-".into()),
                ("HEALTH", "-".into()),
                ("ACTIVE", "-".into()),
                ("RESTARTS", "-".into()),
                ("HEARTBEAT", "-".into()),
                ("STAGED", "-".into()),
                ("FREE", "12.0 GiB".into()),
            ]
        );
        let first = status(Some(supervision(ServerState::Starting)));
        assert_eq!(status_cells(&first)[1..3], ["starting", "-"]);
        assert_eq!(status_cells(&first)[5], "none", "no heartbeat yet");
    }

    #[test]
    fn a_switch_says_what_happened_to_the_server() {
        let switched = |server, changed| Switched {
            active: "1.1.0".into(),
            previous: Some("1.0.0".into()),
            changed,
            server,
        };
        assert_eq!(
            switch_cells(&switched(SwitchOutcome::Committed, true)),
            ["1.1.0", "switched", "committed"]
        );
        assert_eq!(
            switch_cells(&switched(SwitchOutcome::NotRestarted, true)),
            ["1.1.0", "switched", NOT_RESTARTED]
        );
        assert_eq!(
            switch_cells(&switched(SwitchOutcome::NotRestarted, false))[1],
            "unchanged"
        );
    }

    #[test]
    fn ages_and_shortened_text() {
        assert_eq!(age(999), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(307_000), "5m07s");
        assert_eq!(age(3 * 3_600_000 + 5 * 60_000), "3h05m");
        assert_eq!(age(2 * 86_400_000 + 4 * 3_600_000), "2d04h");
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("exactly10!", 10), "exactly10!");
        assert_eq!(shorten("eleven chars", 10), "eleven ch…");
        assert_eq!(shorten("first line\nsecond", 40), "first line…");
    }
}
