//! The rollout state the whole fleet shares, as plain data, and every change to it as
//! a plain function: set by an operator, tripped and cleared guard, schedule steps,
//! pause and resume, a file's new percentage. [`super::Control`] applies the result
//! locally; in fleet mode the store takes it first (docs/fleet.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::PercentageSource;
use crate::config::safety::RollbackTo;
use crate::guard::Trip;

/// A tripped guard, as `GET /admin/rollout` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tripped {
    #[serde(flatten)]
    pub trip: Trip,
    /// Seconds since the epoch.
    pub at: u64,
    pub from_percentage: u8,
    pub rolled_back_to: u8,
}

/// Where the schedule stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Index of the step in force.
    pub index: usize,
    /// When that step began, in milliseconds since the epoch.
    pub started_ms: u64,
    pub paused: bool,
}

/// The shared rollout state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub percentage: u8,
    pub source: PercentageSource,
    /// The percentage before the last raise (the guard's `previous_step` without a
    /// schedule).
    pub before_last_raise: u8,
    pub tripped: Option<Tripped>,
    pub schedule: Option<Position>,
    /// The last file content whose percentage was published: a replica whose file
    /// changes to it later publishes nothing.
    pub file_digest: Option<String>,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The guard holds the rollout back.
    #[error("the canary guard rolled back and holds the percentage at {0}: clear it first (POST /admin/guard/clear)")]
    GuardTripped(u8),
    /// There is no schedule to pause or resume.
    #[error("no [rollout.schedule] is configured")]
    NoSchedule,
    /// A change on one replica alone, with handoffs on: the others would not fence.
    #[error("with [handoff], every change is handed off across the fleet: a change on this replica alone is refused")]
    LocalWithHandoff,
}

/// What the schedule does next.
#[derive(Debug, PartialEq)]
pub enum Advance {
    /// Its last step is in force (or there is none).
    Done,
    /// Ask again after this long.
    Wait(Duration),
    /// The next step, to be held for the hold period.
    Step(Rollout),
}

impl Rollout {
    /// The state a file (and environment) gives on its own.
    pub fn from_file(percentage: u8, source: PercentageSource, digest: Option<String>) -> Rollout {
        Rollout { percentage, source, before_last_raise: 0, tripped: None, schedule: None, file_digest: digest }
    }

    /// Why this state may not be applied, if it is out of range (a store row written
    /// by hand). `steps`: the configured schedule.
    pub fn invalid(&self, steps: &[u8]) -> Option<String> {
        if self.percentage > 100 {
            return Some(format!("percentage {} is over 100", self.percentage));
        }
        if let Some(t) = &self.tripped
            && (t.rolled_back_to > 100 || t.from_percentage > 100)
        {
            return Some("the guard's percentages are over 100".into());
        }
        match &self.schedule {
            Some(p) if p.index >= steps.len() => {
                Some(format!("schedule step {} is past the {} configured steps", p.index, steps.len()))
            }
            _ => None,
        }
    }

    fn with(&self, percentage: u8, source: PercentageSource) -> Rollout {
        let mut next = self.clone();
        if percentage > self.percentage {
            next.before_last_raise = self.percentage;
        }
        next.percentage = percentage;
        next.source = source;
        next
    }

    fn held(&self) -> Option<u8> {
        self.tripped.as_ref().map(|t| t.rolled_back_to)
    }

    /// An operator sets the percentage: the schedule pauses; a tripped guard refuses
    /// raises.
    pub fn set(&self, percentage: u8) -> Result<Rollout, Refused> {
        if let Some(held) = self.held().filter(|h| percentage > *h) {
            return Err(Refused::GuardTripped(held));
        }
        let mut next = self.with(percentage, PercentageSource::Api);
        if let Some(p) = &mut next.schedule {
            p.paused = true;
        }
        Ok(next)
    }

    /// The file now says `percentage` (with content `digest`): it wins over what is in
    /// force, pausing the schedule, unless the guard holds the rollout lower.
    pub fn file(&self, percentage: u8, source: PercentageSource, digest: Option<String>) -> Rollout {
        let held = self.held().filter(|h| percentage > *h);
        let mut next = match held {
            Some(h) => self.with(h, PercentageSource::Guard),
            None => self.with(percentage, source),
        };
        if let Some(p) = &mut next.schedule {
            p.paused = true;
        }
        next.file_digest = digest;
        next
    }

    /// The guard trips: roll back. `None` when it already holds the rollout back.
    pub fn trip(&self, trip: Trip, to: RollbackTo, steps: &[u8], now_ms: u64) -> Option<Rollout> {
        if self.tripped.is_some() {
            return None;
        }
        let from = self.percentage;
        let target = match (to, &self.schedule) {
            (RollbackTo::Zero, _) => 0,
            (RollbackTo::PreviousStep, Some(p)) if p.index > 0 => steps.get(p.index - 1).copied().unwrap_or(0),
            (RollbackTo::PreviousStep, Some(_)) => 0,
            (RollbackTo::PreviousStep, None) => self.before_last_raise.min(from),
        };
        let mut next = self.with(target, PercentageSource::Guard);
        if let Some(p) = &mut next.schedule {
            p.paused = true;
            if to == RollbackTo::PreviousStep {
                p.index = p.index.saturating_sub(1);
            }
        }
        next.tripped = Some(Tripped { trip, at: now_ms / 1000, from_percentage: from, rolled_back_to: target });
        Some(next)
    }

    /// An operator clears the guard (the percentage stays). `None`: it was not tripped.
    pub fn clear_guard(&self) -> Option<Rollout> {
        self.tripped.as_ref()?;
        Some(Rollout { tripped: None, ..self.clone() })
    }

    /// The schedule starts at its first step. `None`: no schedule, or it has started.
    pub fn start_schedule(&self, steps: &[u8], now_ms: u64) -> Option<Rollout> {
        let first = *steps.first()?;
        if self.schedule.is_some() {
            return None;
        }
        let mut next = self.with(first, PercentageSource::Schedule);
        next.schedule = Some(Position { index: 0, started_ms: now_ms, paused: false });
        Some(next)
    }

    /// The schedule's next move at `now_ms`, holding each step for `hold`.
    pub fn advance(&self, steps: &[u8], hold: Duration, now_ms: u64) -> Advance {
        let Some(p) = &self.schedule else { return Advance::Done };
        if p.index + 1 >= steps.len() {
            return Advance::Done;
        }
        if p.paused || self.tripped.is_some() {
            return Advance::Wait(Duration::from_secs(1));
        }
        let held = Duration::from_millis(now_ms.saturating_sub(p.started_ms));
        if held < hold {
            return Advance::Wait(hold - held);
        }
        let mut next = self.with(steps[p.index + 1], PercentageSource::Schedule);
        next.schedule = Some(Position { index: p.index + 1, started_ms: now_ms, paused: false });
        Advance::Step(next)
    }

    /// Pauses (`true`) or resumes the schedule; resuming re-applies the current step
    /// and holds it for a full period.
    pub fn pause(&self, pause: bool, steps: &[u8], now_ms: u64) -> Result<Rollout, Refused> {
        let p = self.schedule.as_ref().ok_or(Refused::NoSchedule)?;
        if !pause && let Some(held) = self.held() {
            return Err(Refused::GuardTripped(held));
        }
        let mut next = if pause { self.clone() } else { self.with(steps[p.index], PercentageSource::Schedule) };
        next.schedule =
            Some(Position { index: p.index, started_ms: if pause { p.started_ms } else { now_ms }, paused: pause });
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::TripReason;
    use crate::routing::service::Service;

    const STEPS: [u8; 4] = [10, 25, 50, 100];
    const HOLD: Duration = Duration::from_secs(600);
    const MIN: u64 = 60_000;

    fn trip() -> Trip {
        Trip { reason: TripReason::ErrorRatio, service: Service::Rest, detail: "test".into() }
    }

    fn file(p: u8) -> Rollout {
        Rollout::from_file(p, PercentageSource::File, None)
    }

    #[test]
    fn a_tripped_guard_holds_until_cleared() {
        let r = file(10).set(50).unwrap().trip(trip(), RollbackTo::Zero, &[], 0).unwrap();
        assert_eq!((r.percentage, r.source), (0, PercentageSource::Guard));
        assert_eq!(r.tripped.as_ref().unwrap().from_percentage, 50);
        assert_eq!(r.set(10).unwrap_err(), Refused::GuardTripped(0));
        assert_eq!(r.file(80, PercentageSource::File, None).percentage, 0, "a file raise does not undo it");
        assert!(r.trip(trip(), RollbackTo::Zero, &[], 0).is_none(), "tripped once");
        let cleared = r.clear_guard().unwrap();
        assert!(cleared.clear_guard().is_none());
        assert_eq!(cleared.set(10).unwrap().percentage, 10);
    }

    #[test]
    fn previous_step_without_a_schedule_is_the_value_before_the_last_raise() {
        let r = file(10).set(25).unwrap().set(50).unwrap();
        assert_eq!(r.trip(trip(), RollbackTo::PreviousStep, &[], 0).unwrap().percentage, 25);
    }

    #[test]
    fn the_schedule_advances_on_time_and_halts_when_the_guard_trips() {
        let r = file(0).start_schedule(&STEPS, 0).unwrap();
        assert_eq!(r.percentage, 10);
        assert!(r.start_schedule(&STEPS, 5).is_none(), "started once");
        assert_eq!(r.advance(&STEPS, HOLD, 9 * MIN), Advance::Wait(Duration::from_secs(60)));
        let Advance::Step(r) = r.advance(&STEPS, HOLD, 10 * MIN) else { panic!("a step after the hold") };
        assert_eq!((r.percentage, r.source), (25, PercentageSource::Schedule));

        let r = r.trip(trip(), RollbackTo::PreviousStep, &STEPS, 11 * MIN).unwrap();
        assert_eq!(r.percentage, 10, "back to the previous step");
        assert_eq!(r.advance(&STEPS, HOLD, 100 * MIN), Advance::Wait(Duration::from_secs(1)), "halted");
        assert_eq!(r.pause(false, &STEPS, 0).unwrap_err(), Refused::GuardTripped(10));
        let r = r.clear_guard().unwrap().pause(false, &STEPS, 100 * MIN).unwrap();
        assert_eq!(r.percentage, 10);
        let Advance::Step(r) = r.advance(&STEPS, HOLD, 110 * MIN) else { panic!() };
        assert_eq!(r.percentage, 25);

        let r = r.pause(true, &STEPS, 111 * MIN).unwrap();
        assert_eq!(r.advance(&STEPS, HOLD, 500 * MIN), Advance::Wait(Duration::from_secs(1)), "paused");
        let mut r = r.pause(false, &STEPS, 500 * MIN).unwrap();
        for (at, want) in [(510, 50), (520, 100)] {
            let Advance::Step(next) = r.advance(&STEPS, HOLD, at * MIN) else { panic!() };
            assert_eq!(next.percentage, want);
            r = next;
        }
        assert_eq!(r.advance(&STEPS, HOLD, 1000 * MIN), Advance::Done);
        assert_eq!(file(5).pause(true, &STEPS, 0).unwrap_err(), Refused::NoSchedule);
    }

    #[test]
    fn an_operator_or_a_file_pauses_the_schedule() {
        let r = file(0).start_schedule(&STEPS, 0).unwrap();
        assert!(r.set(40).unwrap().schedule.unwrap().paused);
        let f = r.file(30, PercentageSource::File, Some("d".into()));
        assert!(f.schedule.unwrap().paused);
        assert_eq!(f.file_digest.as_deref(), Some("d"));
    }

    #[test]
    fn states_out_of_range_are_named() {
        assert!(file(10).invalid(&[]).is_none());
        let mut r = file(10);
        r.percentage = 250;
        assert!(r.invalid(&[]).unwrap().contains("250"));
        let r = file(0).start_schedule(&STEPS, 0).unwrap();
        assert!(r.invalid(&STEPS[..0]).unwrap().contains("step 0"));
        // Through JSON, as a store row is read.
        let back: Rollout = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
