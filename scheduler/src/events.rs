//! A bounded log of executor events with sequence numbers, so drivers in other languages can
//! read them over HTTP (`GET /v1/events?after=N`) without holding a connection open.
//!
//! Invariant: at most [`EVENT_LOG_CAPACITY`] events are kept; a reader asking for events
//! older than that is told it missed some (`missed: true`) and should re-read the executor
//! list.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::snapshots::ExecutorEvent;

/// Events kept.
pub const EVENT_LOG_CAPACITY: usize = 10_000;
/// Events per answer.
pub const EVENTS_PER_PAGE: usize = 1_000;

/// One logged event.
#[derive(Debug, Clone, Serialize)]
pub struct Logged {
    /// Its sequence number, from 1.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: ExecutorEvent,
}

/// An answer to "events after N".
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// Events after the asked sequence number, oldest first.
    pub events: Vec<Logged>,
    /// The sequence number to ask after next time.
    pub next: u64,
    /// Whether events between the asked number and the first returned were dropped.
    pub missed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    log: VecDeque<Logged>,
    last: u64,
}

/// The log.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    inner: Arc<Mutex<Inner>>,
}

impl EventLog {
    fn push(&self, event: ExecutorEvent) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.last += 1;
        let seq = g.last;
        if g.log.len() >= EVENT_LOG_CAPACITY {
            g.log.pop_front();
        }
        g.log.push_back(Logged { seq, event });
    }

    /// Records a gap (the subscription lagged): readers past it are told they missed events.
    fn skip(&self, n: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.last += n;
    }

    /// Events after `after`.
    pub fn after(&self, after: u64) -> Page {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let events: Vec<Logged> = g
            .log
            .iter()
            .filter(|l| l.seq > after)
            .take(EVENTS_PER_PAGE)
            .cloned()
            .collect();
        let first = events.first().map_or(g.last + 1, |l| l.seq);
        Page {
            missed: first > after.saturating_add(1) && after < g.last,
            next: events.last().map_or(g.last.max(after), |l| l.seq),
            events,
        }
    }

    /// Fills the log from a subscription until `cancel`.
    pub async fn fill(self, mut rx: broadcast::Receiver<ExecutorEvent>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                r = rx.recv() => match r {
                    Ok(ev) => self.push(ev),
                    Err(broadcast::error::RecvError::Lagged(n)) => self.skip(n),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ExecutorId;

    #[test]
    fn pages_and_gaps() {
        let log = EventLog::default();
        for i in 1..=3 {
            log.push(ExecutorEvent::Added { id: ExecutorId(i) });
        }
        let p = log.after(0);
        assert_eq!((p.events.len(), p.next, p.missed), (3, 3, false));
        let p = log.after(3);
        assert_eq!((p.events.len(), p.next, p.missed), (0, 3, false));
        log.skip(5);
        log.push(ExecutorEvent::Added { id: ExecutorId(9) });
        let p = log.after(3);
        assert_eq!((p.events.len(), p.next, p.missed), (1, 9, true));
        for i in 0..EVENT_LOG_CAPACITY as u64 {
            log.push(ExecutorEvent::Added {
                id: ExecutorId(100 + i),
            });
        }
        let p = log.after(0);
        assert!(p.missed);
        assert_eq!(p.events.len(), EVENTS_PER_PAGE);
    }
}
