//! Per-camera ordering: events leave in `captured_at` order, whatever order parallel
//! processors published them in.
//!
//! An event waits in a small window until an event captured at least `window` later has
//! arrived (event time, not wall time: the same events give the same order, live or replayed),
//! or until [`Reorder::flush`] releases everything (a quiet camera, the end of a replay). An
//! event captured at or before the last one released is late: the camera has moved past it,
//! so it is counted and dropped, as is a second copy of an event.

use std::collections::{BTreeMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};

/// One camera's ordering buffer, holding items of type `T` keyed by capture time and id.
#[derive(Debug)]
pub struct Reorder<T> {
    window: chrono::Duration,
    waiting: BTreeMap<(DateTime<Utc>, String), T>,
    /// Capture time of the last event released.
    released_until: Option<DateTime<Utc>>,
    /// Ids released recently, to tell a redelivered copy from a late event.
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
    /// Events dropped because they came after the camera had moved past them.
    pub late: u64,
    /// Copies of events already waiting or released.
    pub duplicates: u64,
}

/// How many released ids are remembered to recognise copies.
const RECENT: usize = 512;

/// What happened to an offered event.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Waiting for its turn.
    Queued,
    /// Captured at or before the last released event: dropped.
    Late,
    /// A copy of an event already waiting or released: dropped.
    Duplicate,
}

impl<T> Reorder<T> {
    pub fn new(window: std::time::Duration) -> Reorder<T> {
        Reorder {
            window: chrono::Duration::from_std(window).unwrap_or(chrono::Duration::zero()),
            waiting: BTreeMap::new(),
            released_until: None,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            late: 0,
            duplicates: 0,
        }
    }

    /// Offers an event; call [`Reorder::ready`] to take what may leave.
    pub fn offer(&mut self, captured_at: DateTime<Utc>, id: &str, item: T) -> Offer {
        let key = (captured_at, id.to_string());
        if self.recent_set.contains(id) || self.waiting.contains_key(&key) {
            self.duplicates += 1;
            return Offer::Duplicate;
        }
        if self.released_until.is_some_and(|t| captured_at <= t) {
            self.late += 1;
            return Offer::Late;
        }
        self.waiting.insert(key, item);
        Offer::Queued
    }

    /// Events whose turn has come: captured more than `window` before the newest waiting one.
    pub fn ready(&mut self) -> Vec<T> {
        let Some(((newest, _), _)) = self.waiting.last_key_value() else {
            return Vec::new();
        };
        let horizon = *newest - self.window;
        let mut out = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > horizon {
                break;
            }
            let ((at, id), item) = entry.remove_entry();
            self.release(at, id);
            out.push(item);
        }
        out
    }

    /// Everything waiting, in order (the camera went quiet, or the input ended).
    pub fn flush(&mut self) -> Vec<T> {
        let waiting = std::mem::take(&mut self.waiting);
        waiting
            .into_iter()
            .map(|((at, id), item)| {
                self.release(at, id);
                item
            })
            .collect()
    }

    /// Events waiting now.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Capture time of the last event released.
    pub fn released_until(&self) -> Option<DateTime<Utc>> {
        self.released_until
    }

    /// Starts as if events up to `at` had been released (after a rebuild).
    pub fn resume_after(&mut self, at: DateTime<Utc>) {
        self.released_until = Some(self.released_until.map_or(at, |t| t.max(at)));
    }

    fn release(&mut self, at: DateTime<Utc>, id: String) {
        self.released_until = Some(self.released_until.map_or(at, |t| t.max(at)));
        if self.recent.len() == RECENT {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        self.recent_set.insert(id.clone());
        self.recent.push_back(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn events_leave_in_capture_order_once_the_window_has_passed() {
        let mut r = Reorder::new(Duration::from_millis(300));
        for ms in [0, 200, 100] {
            assert_eq!(r.offer(at(ms), &ms.to_string(), ms), Offer::Queued);
        }
        assert!(
            r.ready().is_empty(),
            "nothing is 300 ms older than the newest yet"
        );
        r.offer(at(400), "400", 400);
        assert_eq!(r.ready(), vec![0, 100]);
        r.offer(at(900), "900", 900);
        assert_eq!(r.ready(), vec![200, 400]);
        assert_eq!(r.flush(), vec![900]);
    }

    #[test]
    fn late_events_and_copies_are_counted_and_dropped() {
        let mut r = Reorder::new(Duration::from_millis(100));
        r.offer(at(0), "a", 0);
        r.offer(at(500), "b", 500);
        assert_eq!(r.ready(), vec![0]);
        assert_eq!(r.offer(at(0), "a", 0), Offer::Duplicate);
        assert_eq!(r.offer(at(500), "b", 500), Offer::Duplicate);
        assert_eq!(r.offer(at(-50), "z", -50), Offer::Late);
        assert_eq!((r.late, r.duplicates), (1, 2));
        // Within the window an out-of-order event is still in time.
        assert_eq!(r.offer(at(450), "c", 450), Offer::Queued);
        assert_eq!(r.flush(), vec![450, 500]);
    }

    #[test]
    fn the_same_events_in_any_order_leave_in_the_same_order() {
        let order = |input: &[i64]| {
            let mut r = Reorder::new(Duration::from_millis(250));
            let mut out = Vec::new();
            for &ms in input {
                r.offer(at(ms), &ms.to_string(), ms);
                out.extend(r.ready());
            }
            out.extend(r.flush());
            out
        };
        let sorted = order(&[0, 100, 200, 300, 400, 500]);
        assert_eq!(order(&[100, 0, 300, 200, 500, 400]), sorted);
        assert_eq!(order(&[0, 200, 100, 100, 400, 300, 500]), sorted);
    }
}
