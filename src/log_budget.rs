//! A budget for log lines that anybody can cause without credentials (a
//! refused SockJS session, a wrong webhook key, a panic in one connection):
//! the first few of each kind per interval are written, the rest only
//! counted, and one summary line per interval says how many were left out.
//! Their metrics count every one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines of one kind written per interval before the rest are counted.
const LINES_PER_INTERVAL: u32 = 5;
/// How often the summary of left-out lines is written.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The budget of one kind of line (one `static` per call site).
pub struct LogBudget {
    /// What the lines are about, for the summary ("SockJS session refused").
    what: &'static str,
    interval: Duration,
    /// Lines written per interval before the rest are counted.
    lines: u32,
    state: Mutex<State>,
}

struct State {
    /// When the current interval started; `None` before the first line.
    since: Option<Instant>,
    written: u32,
    /// Left out since the last summary.
    dropped: u64,
    /// Whether a task waits to write this interval's summary.
    summary_due: bool,
}

impl LogBudget {
    pub const fn new(what: &'static str) -> Self {
        Self::with_interval(what, INTERVAL)
    }

    pub const fn with_interval(what: &'static str, interval: Duration) -> Self {
        Self::with_lines(what, interval, LINES_PER_INTERVAL)
    }

    /// `lines` per `interval`: one, for a condition that holds a while (a
    /// full disk) and should be said once per interval.
    pub const fn with_lines(what: &'static str, interval: Duration, lines: u32) -> Self {
        LogBudget {
            what,
            interval,
            lines,
            state: Mutex::new(State {
                since: None,
                written: 0,
                dropped: 0,
                summary_due: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this line may be written. When it may not, it is counted,
    /// and a summary is written when the interval ends.
    pub fn admit(&'static self) -> bool {
        let now = Instant::now();
        let mut st = self.lock();
        let fresh = st.since.is_none_or(|since| now >= since + self.interval);
        let mut late_summary = 0;
        if fresh && !st.summary_due {
            // Left out while no task could write the summary (no runtime).
            late_summary = std::mem::take(&mut st.dropped);
            st.since = Some(now);
            st.written = 0;
        }
        let admitted = st.written < self.lines;
        if admitted {
            st.written += 1;
        } else {
            st.dropped = st.dropped.saturating_add(1);
            if !st.summary_due {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    st.summary_due = true;
                    let ends = st.since.map_or(now, |s| s + self.interval);
                    rt.spawn(async move {
                        tokio::time::sleep_until(ends.into()).await;
                        self.summarise();
                    });
                }
            }
        }
        drop(st);
        if late_summary > 0 {
            self.write_summary(late_summary);
        }
        admitted
    }

    fn summarise(&self) {
        let mut st = self.lock();
        let dropped = std::mem::take(&mut st.dropped);
        st.summary_due = false;
        st.since = None;
        drop(st);
        self.write_summary(dropped);
    }

    fn write_summary(&self, dropped: u64) {
        if dropped > 0 {
            tracing::warn!(
                left_out = dropped,
                "{}: {dropped} more like this were not logged (the metric counts them all)",
                self.what
            );
        }
    }
}

/// Panics go to the log through `tracing`, within a budget, instead of a
/// raw message and backtrace on standard error per panic: a bug that one
/// stranger's frame can reach must not let them fill the disk. Each is
/// counted in `bizcall_panics_total`. The task that panicked ends (a
/// tablet's connection is closed with 1011; see `stomp::connection`).
pub fn log_panics() {
    static PANICS: LogBudget = LogBudget::new("a task panicked");
    std::panic::set_hook(Box::new(|info| {
        crate::metrics::panicked();
        if !PANICS.admit() {
            return;
        }
        let payload = info.payload();
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            panic = what,
            %location,
            "a task panicked (a bug): the connection or request it served ended, the instance goes on"
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_pass_then_the_rest_are_counted() {
        static B: LogBudget = LogBudget::new("test lines");
        let admitted = (0..1000).filter(|_| B.admit()).count();
        assert_eq!(admitted, LINES_PER_INTERVAL as usize);
        assert_eq!(B.lock().dropped, 1000 - LINES_PER_INTERVAL as u64);
    }

    #[tokio::test]
    async fn one_summary_when_the_interval_ends_then_a_new_budget() {
        static B: LogBudget = LogBudget::with_interval("test lines", Duration::from_millis(50));
        let admitted = (0..1000).filter(|_| B.admit()).count();
        assert_eq!(admitted, LINES_PER_INTERVAL as usize);
        assert!(B.lock().summary_due);
        // The summary task runs once the interval has ended.
        for _ in 0..100 {
            if !B.lock().summary_due {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let st = B.lock();
        assert!(!st.summary_due);
        assert_eq!(st.dropped, 0);
        drop(st);
        assert!(B.admit());
    }
}
