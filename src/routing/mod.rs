//! The route decision: which backend a request goes to, from the rollout, the service
//! policy and the request's identity. A pure function, so every rule is unit-tested
//! here and the request path only gathers inputs.

pub mod band;
pub mod path;
pub mod percentile;
pub mod policy;
pub mod service;

use serde::Serialize;

use crate::backend::BackendId;
use percentile::{in_v2_cohort, percentile};
use policy::{AnonymousPolicy, Policy};

/// Why a request went where it went (logs, `route` command, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `SUPABASE_ENV` / `rollout.force_backend`.
    Forced,
    /// The service's policy pins it.
    Pinned,
    /// The user's cohort at the current percentage.
    Cohort,
    /// An anonymous request, by the anonymous policy.
    Anonymous,
    /// A Storage signed URL, sent to the project whose secret signed it.
    SignedUrl,
    /// A user pinned in `[overrides]`, or the QA override header.
    Override,
}

/// The inputs of a decision that come from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rollout<'a> {
    /// 0–100.
    pub percentage: u8,
    /// Salt prepended to user ids.
    pub seed: &'a [u8],
    /// Everything to one backend.
    pub force: Option<BackendId>,
    /// What to do without a user id.
    pub anonymous: AnonymousPolicy,
}

/// Who is asking, as far as routing cares.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// Someone whose backend is chosen for them (pinned user, QA header).
    Pinned(BackendId),
    /// A user id.
    User(&'a str),
    /// No user id; the cohort cookie's percentile if the browser has one.
    Anonymous { cookie: Option<u8> },
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Where the request goes.
    pub backend: BackendId,
    /// The percentile compared with the rollout, when one was.
    pub percentile: Option<u8>,
    /// Why.
    pub reason: Reason,
    /// A fresh cohort percentile the response must store in the cookie.
    pub set_cookie: Option<u8>,
}

impl Decision {
    /// A decision that does not depend on the rollout.
    pub fn fixed(backend: BackendId, reason: Reason) -> Decision {
        Decision { backend, percentile: None, reason, set_cookie: None }
    }

    fn by_percentile(p: u8, rollout: u8, reason: Reason) -> Decision {
        let backend = if in_v2_cohort(p, rollout) { BackendId::V2 } else { BackendId::V1 };
        Decision { backend, percentile: Some(p), reason, set_cookie: None }
    }
}

/// A hash of `key` (a user id, or a client's address), stable for the process: the
/// guard's identity slots, a handoff's single users.
pub fn who(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x5eed).hash_one(key)
}

/// Decides where a request goes. `draw` yields a random percentile (0–99) and is only
/// called for anonymous requests that need one.
pub fn decide(rollout: &Rollout<'_>, policy: Policy, subject: Subject<'_>, draw: impl FnOnce() -> u8) -> Decision {
    if let Some(b) = rollout.force {
        return Decision::fixed(b, Reason::Forced);
    }
    if let Some(b) = policy.pinned() {
        return Decision::fixed(b, Reason::Pinned);
    }
    match subject {
        Subject::Pinned(b) => Decision::fixed(b, Reason::Override),
        Subject::User(id) => Decision::by_percentile(percentile(rollout.seed, id), rollout.percentage, Reason::Cohort),
        Subject::Anonymous { cookie } => match rollout.anonymous {
            AnonymousPolicy::V1 => Decision::fixed(BackendId::V1, Reason::Anonymous),
            AnonymousPolicy::V2 => Decision::fixed(BackendId::V2, Reason::Anonymous),
            AnonymousPolicy::Random => Decision::by_percentile(draw(), rollout.percentage, Reason::Anonymous),
            AnonymousPolicy::Cookie => match cookie {
                Some(p) => Decision::by_percentile(p, rollout.percentage, Reason::Anonymous),
                None => {
                    let p = draw();
                    Decision {
                        set_cookie: Some(p),
                        ..Decision::by_percentile(p, rollout.percentage, Reason::Anonymous)
                    }
                }
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(percentage: u8, anonymous: AnonymousPolicy) -> Rollout<'static> {
        Rollout { percentage, seed: b"", force: None, anonymous }
    }

    fn never() -> u8 {
        panic!("no draw expected")
    }

    #[test]
    fn users_follow_their_cohort() {
        // "user-1" is at percentile 19 (see the vectors).
        let r = |pct| decide(&rollout(pct, AnonymousPolicy::Random), Policy::Rollout, Subject::User("user-1"), never);
        assert_eq!(r(19).backend, BackendId::V1);
        assert_eq!(r(20).backend, BackendId::V2);
        assert_eq!(r(20).percentile, Some(19));
        assert_eq!(r(0).backend, BackendId::V1);
        assert_eq!(r(100).backend, BackendId::V2);
    }

    #[test]
    fn force_beats_pins_and_pins_beat_cohorts() {
        let mut r = rollout(100, AnonymousPolicy::V2);
        assert_eq!(decide(&r, Policy::V1, Subject::User("u"), never).reason, Reason::Pinned);
        assert_eq!(decide(&r, Policy::V1, Subject::User("u"), never).backend, BackendId::V1);
        r.force = Some(BackendId::V1);
        let d = decide(&r, Policy::V2, Subject::User("u"), never);
        assert_eq!((d.backend, d.reason), (BackendId::V1, Reason::Forced));
    }

    #[test]
    fn overrides_beat_cohorts_but_not_pins() {
        let r = rollout(0, AnonymousPolicy::V1);
        let d = decide(&r, Policy::Rollout, Subject::Pinned(BackendId::V2), never);
        assert_eq!((d.backend, d.reason), (BackendId::V2, Reason::Override));
        assert_eq!(decide(&r, Policy::V1, Subject::Pinned(BackendId::V2), never).backend, BackendId::V1);
    }

    #[test]
    fn anonymous_policies() {
        let anon = Subject::Anonymous { cookie: None };
        assert_eq!(decide(&rollout(50, AnonymousPolicy::V1), Policy::Rollout, anon, never).backend, BackendId::V1);
        assert_eq!(decide(&rollout(50, AnonymousPolicy::V2), Policy::Rollout, anon, never).backend, BackendId::V2);
        let random = rollout(50, AnonymousPolicy::Random);
        assert_eq!(decide(&random, Policy::Rollout, anon, || 49).backend, BackendId::V2);
        assert_eq!(decide(&random, Policy::Rollout, anon, || 50).backend, BackendId::V1);
        let cookie = rollout(50, AnonymousPolicy::Cookie);
        let fresh = decide(&cookie, Policy::Rollout, anon, || 7);
        assert_eq!((fresh.backend, fresh.set_cookie), (BackendId::V2, Some(7)));
        let kept = decide(&cookie, Policy::Rollout, Subject::Anonymous { cookie: Some(80) }, never);
        assert_eq!((kept.backend, kept.set_cookie), (BackendId::V1, None));
    }
}
