//! Admission control: whether the gateway takes one more call.
//!
//! A caller the box cannot answer in time is served worse by an answered call (silence, replies
//! seconds late, turns lost) than by a clean refusal: a 503 with Retry-After lets the trunk or
//! the dispatcher in front of a cluster try another gateway, and the calls in progress keep
//! their latency. Two limits, either of which refuses:
//! - **capacity**: calls in progress per CPU core (`[admission] calls_per_core`), the figure
//!   measured with talking callers (`cargo bench --bench turn_latency`). It holds while every
//!   call is still listening to its greeting, which a load signal would not see yet.
//! - **overload**: the gateway's own measure of lateness, how long end-of-turn inference jobs
//!   waited for a worker (90th percentile over `window_s`, from the inference pool). It
//!   catches what the call count cannot: longer turns, a slower machine, other load.
//!
//! Sans-IO: the caller of [`AdmissionPolicy::admit`] supplies the count and the measured wait.

use std::time::Duration;

use crate::config::AdmissionConfig;

/// Fewest end-of-turn jobs in the window for their waits to count: one slow job (a cold model,
/// a long reply) is not a trend.
pub const MIN_TURN_SAMPLES: usize = 5;

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `calls` were in progress, the limit is `limit`.
    Capacity { calls: usize, limit: usize },
    /// End-of-turn jobs waited `waited` (the quantile), more than `limit`.
    Overloaded { waited: Duration, limit: Duration },
}

impl Refusal {
    /// The metrics' and the log's name of the reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Capacity { .. } => "admission_capacity",
            Refusal::Overloaded { .. } => "admission_overload",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Capacity { calls, limit } => {
                write!(f, "{calls} calls in progress, the limit is {limit}")
            }
            Refusal::Overloaded { waited, limit } => write!(
                f,
                "end-of-turn inference waited {} ms (p90), the limit is {} ms",
                waited.as_millis(),
                limit.as_millis()
            ),
        }
    }
}

/// The limits, resolved from `[admission]` for this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionPolicy {
    /// Calls in progress at most; None: no limit here (`[sip] max_calls` still holds).
    pub max_calls: Option<usize>,
    /// The longest acceptable end-of-turn wait (the quantile); None: not checked.
    pub max_turn_wait: Option<Duration>,
    /// The window the waits are taken over.
    pub window: Duration,
    /// Retry-After of the refusal, seconds.
    pub retry_after_s: u32,
}

impl AdmissionPolicy {
    /// The policy for a machine with `cores` cores (used when `[admission] cores` is 0).
    pub fn new(config: &AdmissionConfig, cores: usize) -> Self {
        let cores = if config.cores == 0 {
            cores.max(1)
        } else {
            config.cores
        };
        AdmissionPolicy {
            max_calls: (config.calls_per_core > 0).then(|| config.calls_per_core * cores),
            max_turn_wait: (config.max_turn_wait_ms > 0)
                .then(|| Duration::from_millis(config.max_turn_wait_ms)),
            window: config.window(),
            retry_after_s: config.retry_after_s,
        }
    }

    /// Whether a new call may be taken with `calls` other calls in progress, given the
    /// end-of-turn waits measured over [`Self::window`] (the quantile and the number of jobs).
    pub fn admit(&self, calls: usize, turn_wait: Option<(Duration, usize)>) -> Result<(), Refusal> {
        if let Some(limit) = self.max_calls {
            if calls >= limit {
                return Err(Refusal::Capacity { calls, limit });
            }
        }
        if let (Some(limit), Some((waited, jobs))) = (self.max_turn_wait, turn_wait) {
            if jobs >= MIN_TURN_SAMPLES && waited > limit {
                return Err(Refusal::Overloaded { waited, limit });
            }
        }
        Ok(())
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let calls = match self.max_calls {
            Some(n) => format!("at most {n} calls"),
            None => "no call limit but [sip] max_calls".to_string(),
        };
        let wait = match self.max_turn_wait {
            Some(w) => format!(
                "refusing while end-of-turn inference waits over {} ms (p90 over {} s)",
                w.as_millis(),
                self.window.as_secs()
            ),
            None => "no lateness check".to_string(),
        };
        format!("{calls}; {wait}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AdmissionPolicy {
        AdmissionPolicy::new(&AdmissionConfig::default(), 2)
    }

    #[test]
    fn the_call_limit_is_per_core() {
        let p = policy();
        assert_eq!(p.max_calls, Some(12));
        assert_eq!(p.admit(11, None), Ok(()));
        assert_eq!(
            p.admit(12, None),
            Err(Refusal::Capacity {
                calls: 12,
                limit: 12
            })
        );
        let pinned = AdmissionPolicy::new(
            &AdmissionConfig {
                cores: 8,
                ..AdmissionConfig::default()
            },
            2,
        );
        assert_eq!(
            pinned.max_calls,
            Some(48),
            "[admission] cores wins over the machine's"
        );
        let off = AdmissionPolicy::new(
            &AdmissionConfig {
                calls_per_core: 0,
                max_turn_wait_ms: 0,
                ..AdmissionConfig::default()
            },
            2,
        );
        assert_eq!(
            off.admit(10_000, Some((Duration::from_secs(9), 100))),
            Ok(())
        );
    }

    #[test]
    fn late_end_of_turn_work_refuses_new_calls() {
        let p = policy();
        let late = Some((Duration::from_millis(400), 12));
        assert_eq!(
            p.admit(3, late),
            Err(Refusal::Overloaded {
                waited: Duration::from_millis(400),
                limit: Duration::from_millis(250)
            })
        );
        assert_eq!(p.admit(3, Some((Duration::from_millis(250), 12))), Ok(()));
        assert_eq!(p.admit(3, None), Ok(()), "an idle pool is not late");
    }

    #[test]
    fn a_few_slow_jobs_are_not_a_trend() {
        let p = policy();
        let few = Some((Duration::from_secs(2), MIN_TURN_SAMPLES - 1));
        assert_eq!(p.admit(3, few), Ok(()));
    }

    #[test]
    fn refusals_explain_themselves() {
        let r = Refusal::Overloaded {
            waited: Duration::from_millis(400),
            limit: Duration::from_millis(250),
        };
        assert_eq!(r.reason(), "admission_overload");
        assert!(r.to_string().contains("400 ms"));
        assert!(policy().describe().contains("at most 12 calls"));
    }
}
