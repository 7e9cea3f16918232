//! Per-service and anonymous-request policies: the operator's knobs that the route
//! decision reads.

use serde::{Deserialize, Serialize};

use crate::backend::BackendId;
use crate::routing::service::Service;

/// Where a service's requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Follow the user's cohort.
    Rollout,
    /// Always the old project.
    V1,
    /// Always the new project.
    V2,
}

impl Policy {
    /// The backend a policy pins to, if it pins.
    pub const fn pinned(self) -> Option<BackendId> {
        match self {
            Policy::Rollout => None,
            Policy::V1 => Some(BackendId::V1),
            Policy::V2 => Some(BackendId::V2),
        }
    }
}

/// What to do with a request that carries no user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnonymousPolicy {
    /// Draw a percentile per request (what the migration guide's TypeScript does).
    Random,
    /// Always v1.
    V1,
    /// Always v2.
    V2,
    /// Draw a percentile once, keep it in a cookie, treat it like a user's.
    Cookie,
}

/// The policy of every service, indexed by [`Service::index`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePolicies([Policy; Service::ALL.len()]);

impl Default for ServicePolicies {
    /// Data services follow the cohort; auth, storage and realtime stay on v1 until
    /// sessions and objects are cut over (docs/routing.md). Unknown paths stay on v1 too.
    fn default() -> Self {
        let mut p = [Policy::V1; Service::ALL.len()];
        for s in [Service::Rest, Service::Functions, Service::Graphql] {
            p[s.index()] = Policy::Rollout;
        }
        ServicePolicies(p)
    }
}

impl ServicePolicies {
    /// The policy for `service`.
    pub fn get(&self, service: Service) -> Policy {
        self.0[service.index()]
    }

    /// Sets the policy for `service`.
    pub fn set(&mut self, service: Service, policy: Policy) {
        self.0[service.index()] = policy;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let p = ServicePolicies::default();
        assert_eq!(p.get(Service::Rest), Policy::Rollout);
        assert_eq!(p.get(Service::Functions), Policy::Rollout);
        assert_eq!(p.get(Service::Graphql), Policy::Rollout);
        assert_eq!(p.get(Service::Auth), Policy::V1);
        assert_eq!(p.get(Service::Storage), Policy::V1);
        assert_eq!(p.get(Service::Realtime), Policy::V1);
        assert_eq!(p.get(Service::Other), Policy::V1);
    }
}
