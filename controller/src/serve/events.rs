//! Live updates of `fleet serve`: a hub of numbered notes (a node's view changed, ...) kept
//! for a while, and the Server-Sent Events stream (`GET /api/events`) that replays the notes
//! after the client's `Last-Event-ID` and then follows new ones. Ids grow across restarts (they
//! start from the clock), so a client coming back with an id the hub no longer holds, or
//! falling too far behind, gets a `reset` note: reload the page. Every stream ends when the
//! server shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast;

use super::App;

/// How many notes the hub keeps for clients that come back.
const KEPT: usize = 1024;

/// One note.
#[derive(Debug)]
pub struct Note {
    pub id: u64,
    /// The SSE event name (`node`, `reset`).
    pub kind: &'static str,
    pub data: serde_json::Value,
}

struct Kept {
    next: u64,
    recent: VecDeque<Arc<Note>>,
}

pub struct Hub {
    kept: Mutex<Kept>,
    live: broadcast::Sender<Arc<Note>>,
}

impl Default for Hub {
    fn default() -> Self {
        // Ids start from the clock (ms × 1000), so they keep growing across restarts.
        let start = u64::try_from(crate::store::now_ms()).unwrap_or(0) * 1000;
        Hub {
            kept: Mutex::new(Kept {
                next: start,
                recent: VecDeque::with_capacity(KEPT),
            }),
            live: broadcast::channel(KEPT).0,
        }
    }
}

impl Hub {
    /// Publishes a note to every stream and keeps it.
    pub fn publish(&self, kind: &'static str, data: serde_json::Value) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let note = Arc::new(Note {
            id: kept.next,
            kind,
            data,
        });
        kept.next += 1;
        if kept.recent.len() == KEPT {
            kept.recent.pop_front();
        }
        kept.recent.push_back(note.clone());
        // Sent under the lock: a subscriber sees each note once, kept or live.
        let _ = self.live.send(note);
    }

    /// The notes after `last` (none asked: none), or `None` when `last` is not one the hub
    /// can continue from; and the live notes from now on.
    fn subscribe(
        &self,
        last: Option<u64>,
    ) -> (Option<Vec<Arc<Note>>>, broadcast::Receiver<Arc<Note>>) {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = self.live.subscribe();
        let backlog = match last {
            None => Some(Vec::new()),
            Some(last) => {
                let first = kept.recent.front().map_or(kept.next, |n| n.id);
                // `last` must be one this process handed out, or the one just before its first.
                (last + 1 >= first && last < kept.next).then(|| {
                    kept.recent
                        .iter()
                        .filter(|n| n.id > last)
                        .cloned()
                        .collect()
                })
            }
        };
        (backlog, receiver)
    }
}

fn event(note: &Note) -> Event {
    Event::default()
        .id(note.id.to_string())
        .event(note.kind)
        .data(note.data.to_string())
}

fn reset() -> Event {
    Event::default().event("reset").data(r#"{"reload":true}"#)
}

/// `GET /api/events`: the notes after `Last-Event-ID`, then new ones, until the shutdown.
pub async fn stream(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (backlog, receiver) = app.events.subscribe(last);
    let first: Vec<Result<Event, Infallible>> = match backlog {
        Some(notes) => notes.iter().map(|n| Ok(event(n))).collect(),
        None => vec![Ok(reset())],
    };
    let live = stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Ok(note) => Some((Ok(event(&note)), Some(receiver))),
            // Too far behind: the client reloads (and the stream ends).
            Err(broadcast::error::RecvError::Lagged(_)) => Some((Ok(reset()), None)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    let stop = app.stop.clone();
    let all: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> = Box::pin(
        stream::iter(first)
            .chain(live)
            .take_until(async move { stop.cancelled().await }),
    );
    Sse::new(all)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_resumes_after_its_last_id_or_is_told_to_reload() {
        let hub = Hub::default();
        let (_, mut live) = hub.subscribe(None);
        for n in 0..3 {
            hub.publish("node", serde_json::json!({ "n": n }));
        }
        let ids: Vec<u64> = (0..3).map(|_| live.try_recv().expect("live").id).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
        let (after_first, _) = hub.subscribe(Some(ids[0]));
        let resumed: Vec<u64> = after_first.expect("kept").iter().map(|n| n.id).collect();
        assert_eq!(resumed, ids[1..]);
        assert_eq!(hub.subscribe(Some(ids[2])).0.expect("kept").len(), 0);
        // An id from before this hub (a restart long ago) or from the future: reload.
        assert!(hub.subscribe(Some(ids[0] - 2)).0.is_none());
        assert!(hub.subscribe(Some(ids[2] + 5)).0.is_none());
        // Past what is kept: reload.
        for _ in 0..KEPT {
            hub.publish("node", serde_json::json!({}));
        }
        assert!(hub.subscribe(Some(ids[0])).0.is_none());
    }
}
