//! One piece of work per node, at most `parallel` at a time, with a progress line on stderr as
//! each node finishes and results kept in inventory order. A slow or dead node holds up only
//! its own slot. Not the work itself, and not the summary: callers render their results.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use fleet_proto::Code;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How one node's work ended.
#[derive(Debug)]
pub struct NodeResult<T> {
    pub node: String,
    pub outcome: Result<T, NodeFailure>,
}

/// Why one node's work failed: the error's one line and, when the agent refused, its code.
#[derive(Debug)]
pub struct NodeFailure {
    pub error: String,
    pub code: Option<Code>,
}

impl NodeFailure {
    fn of(error: &anyhow::Error) -> Self {
        Self {
            error: format!("{error:#}"),
            code: crate::node::refusal(error).map(|r| r.code),
        }
    }

    /// The node's problem line (after its name): the error, after what a failed upgrade step
    /// left behind when it failed so.
    pub fn problem(&self) -> String {
        match self.label() {
            "FAILED" => self.error.clone(),
            label => format!("{}: {}", label.to_lowercase(), self.error),
        }
    }

    /// What the node's line and row say before the error: `FAILED`, or what an upgrade step
    /// that failed left behind.
    pub fn label(&self) -> &'static str {
        match self.code {
            Some(Code::RolledBack) => "ROLLED BACK",
            Some(Code::RollbackFailed) => "ROLLBACK FAILED",
            Some(Code::DaemonLost) => "DAEMON LOST",
            _ => "FAILED",
        }
    }
}

/// Runs `work` for every `(node name, input)` pair, with bounded concurrency. When
/// `progress` is set, prints `[k/n] node: ok|FAILED: error` on stderr as each finishes.
pub async fn run<I, T, F, Fut>(
    items: Vec<(String, I)>,
    parallel: usize,
    progress: bool,
    work: F,
) -> Vec<NodeResult<T>>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let total = items.len();
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let done = Arc::new(AtomicUsize::new(0));
    let work = Arc::new(work);
    let mut tasks = JoinSet::new();
    let mut ids = std::collections::HashMap::new();
    for (index, (node, input)) in items.into_iter().enumerate() {
        let (permits, done, work) = (permits.clone(), done.clone(), work.clone());
        let name = node.clone();
        let handle = tasks.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let started = Instant::now();
            let outcome = work(input).await.map_err(|e| NodeFailure::of(&e));
            let elapsed = started.elapsed();
            if progress {
                let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                match &outcome {
                    Ok(_) => eprintln!("[{k}/{total}] {node}: ok ({:.1} s)", elapsed.as_secs_f64()),
                    Err(e) => eprintln!("[{k}/{total}] {node}: {}: {}", e.label(), e.error),
                }
            }
            (index, NodeResult { node, outcome })
        });
        ids.insert(handle.id(), (index, name));
    }
    let mut results: Vec<Option<NodeResult<T>>> = (0..total).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => results[index] = Some(result),
            // A panicking task is a bug; the node still gets its row, as failed.
            Err(e) => {
                if let Some((index, node)) = ids.remove(&e.id()) {
                    let outcome = Err(NodeFailure {
                        error: format!("internal error: {e}"),
                        code: None,
                    });
                    results[index] = Some(NodeResult { node, outcome });
                }
            }
        }
    }
    results.into_iter().flatten().collect()
}

/// Renders rows under headers as a plain table with aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut text = line(headers.to_vec());
    for row in rows {
        text.push('\n');
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

#[cfg(test)]
mod tests {
    use fleet_proto::Refusal;

    use super::*;
    use crate::AgentCallError;

    fn refused(code: Code, error: &str) -> NodeFailure {
        let e = anyhow::Error::from(AgentCallError::Refused {
            request: "activate 1.1.0".into(),
            refusal: Refusal::new(code, error),
        });
        NodeFailure::of(&e.context("acme-1"))
    }

    #[test]
    fn a_failed_upgrade_step_says_what_it_left_behind() {
        let rolled = refused(
            Code::RolledBack,
            "1.1.0 failed its health gate; 1.0.0 serves",
        );
        assert_eq!(rolled.code, Some(Code::RolledBack));
        assert_eq!(rolled.label(), "ROLLED BACK");
        assert_eq!(
            rolled.problem(),
            "rolled back: acme-1: 1.1.0 failed its health gate; 1.0.0 serves"
        );
        assert_eq!(
            refused(Code::RollbackFailed, "1.0.0 does not start").label(),
            "ROLLBACK FAILED"
        );
        assert_eq!(refused(Code::DaemonLost, "gone").label(), "DAEMON LOST");

        let busy = refused(Code::Busy, "another operation holds the node");
        assert_eq!((busy.label(), busy.code), ("FAILED", Some(Code::Busy)));
        assert_eq!(busy.problem(), "acme-1: another operation holds the node");
        let transport = NodeFailure::of(&anyhow::anyhow!("connection refused"));
        assert_eq!((transport.label(), transport.code), ("FAILED", None));
    }
}
