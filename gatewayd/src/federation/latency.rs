//! How fast each peer answers, so the borrower asks the fastest of equally cheap lenders
//! first. A moving average of successful calls; a peer that just failed goes last for a
//! while, then is judged by its average again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a failed peer is ranked last.
const FAILED_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Seen {
    average: Duration,
    failed_at: Option<Instant>,
}

/// Latencies per peer id.
#[derive(Debug, Default)]
pub struct Latency {
    peers: Mutex<HashMap<String, Seen>>,
}

impl Latency {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a call to `peer` that took `took` (`None`: it failed).
    pub fn observe(&self, peer: &str, took: Option<Duration>) {
        self.observe_at(peer, took, Instant::now());
    }

    fn observe_at(&self, peer: &str, took: Option<Duration>, now: Instant) {
        let mut peers = self.lock();
        let seen = peers.entry(peer.to_owned()).or_insert(Seen { average: took.unwrap_or_default(), failed_at: None });
        match took {
            // An average over about the last four calls.
            Some(t) => {
                seen.average = (seen.average * 3 + t) / 4;
                seen.failed_at = None;
            }
            None => seen.failed_at = Some(now),
        }
    }

    /// The rank of `peer` at `now`: recently failed last, then by average; a peer never
    /// called counts as fast (so it is tried and measured).
    pub fn rank(&self, peer: &str, now: Instant) -> (bool, Duration) {
        match self.lock().get(peer) {
            None => (false, Duration::ZERO),
            Some(s) => (s.failed_at.is_some_and(|f| now.duration_since(f) < FAILED_FOR), s.average),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_first_and_a_failed_peer_last_for_a_while() {
        let l = Latency::default();
        let t0 = Instant::now();
        l.observe_at("slow", Some(Duration::from_millis(40)), t0);
        l.observe_at("fast", Some(Duration::from_millis(4)), t0);
        assert!(l.rank("fast", t0) < l.rank("slow", t0));
        assert!(l.rank("new", t0) < l.rank("fast", t0));
        l.observe_at("fast", None, t0);
        assert!(l.rank("slow", t0) < l.rank("fast", t0));
        assert!(l.rank("fast", t0 + FAILED_FOR) < l.rank("slow", t0 + FAILED_FOR));
        l.observe_at("fast", Some(Duration::from_millis(4)), t0);
        assert!(l.rank("fast", t0) < l.rank("slow", t0));
    }
}
