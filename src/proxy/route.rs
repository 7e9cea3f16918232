//! Gathers a request's routing inputs (identity, cohort cookie, signed-URL token) from
//! its head and the snapshot, and asks [`crate::routing::decide`] where it goes.

use std::sync::Arc;

use http::{HeaderMap, Uri};

use crate::backend::BackendId;
use crate::config::Config;
use crate::config::safety::OverridesConfig;
use crate::identity::{self, AuthReason, Token};
use crate::routing::service::Service;
use crate::routing::{self, Decision, Reason, Rollout, Subject};
use crate::state::Snapshot;

/// Where a request goes, and what its bearer token turned out to be.
#[derive(Debug, Clone)]
pub struct Route {
    /// The decision.
    pub decision: Decision,
    /// The bearer token, classified (needed to translate it for the other project).
    pub token: Option<Token>,
    /// Why the bearer token was refused, if it was.
    pub refused: Option<AuthReason>,
    /// A hash of the user id, when the request has one (the guard weighs users).
    pub who: Option<u64>,
    /// The user id, when `[handoff]` is on (who wrote on v2 is remembered).
    pub user: Option<Arc<str>>,
}

pub use crate::routing::who;

/// The `token` query parameter of a Storage signed URL.
fn signed_url_token<'a>(path: &str, query: Option<&'a str>) -> Option<&'a str> {
    let signed = ["/storage/v1/object/sign/", "/storage/v1/render/image/sign/"];
    if !signed.iter().any(|p| path.starts_with(p)) {
        return None;
    }
    query?.split('&').find_map(|pair| pair.strip_prefix("token="))
}

/// The backend a QA override header asks for (`<qa_header>: v1|v2:<token>`), when its
/// token matches the configured one (compared in constant time).
fn qa_override(headers: &HeaderMap, overrides: &OverridesConfig) -> Option<BackendId> {
    let (name, expected) = (overrides.qa_header.as_ref()?, overrides.qa_token.as_ref()?);
    let (backend, token) = headers.get(name)?.to_str().ok()?.split_once(':')?;
    let same: bool = subtle::ConstantTimeEq::ct_eq(token.trim().as_bytes(), expected.expose().as_bytes()).into();
    same.then(|| BackendId::parse(backend.trim())).flatten()
}

/// Decides where a request goes, from its head under `snap`. A refused bearer token
/// still gets a decision (as an anonymous request), so that the refusal is counted
/// against the backend the request was meant for.
pub fn route(snap: &Snapshot, service: Service, headers: &HeaderMap, uri: &Uri) -> Route {
    let id = &snap.config.identity;
    let path = uri.path();
    let (identity, refused) = match identity::extract(headers, path, &id.sources, &id.header, &snap.verifier) {
        Ok(identity) => (identity, None),
        Err(reason) => (identity::Identity::NOBODY, Some(reason)),
    };
    // A signed URL only verifies on the project that signed it, whatever the policy.
    if let Some(backend) = signed_url_token(path, uri.query()).and_then(|t| snap.verifier.signed_by(t)) {
        let decision = Decision::fixed(backend, Reason::SignedUrl);
        return Route { decision, token: identity.token, refused, who: None, user: None };
    }
    let overrides = &snap.config.overrides;
    let user = identity.user().map(|(u, _)| u);
    let pinned = qa_override(headers, overrides).or_else(|| user.and_then(|u| overrides.users.get(u).copied()));
    let subject = match (user, pinned) {
        (_, Some(b)) => Subject::Pinned(b),
        (Some(user), None) => Subject::User(user),
        (None, None) => Subject::Anonymous { cookie: identity::cookie_percentile(headers, &id.cookie_name) },
    };
    let policy = snap.config.services.get(service);
    let decision = routing::decide(&rollout(&snap.config), policy, subject, || fastrand::u8(0..100));
    let who = user.map(|u| who(u.as_bytes()));
    let user = user.filter(|_| snap.config.handoff.is_some()).map(Arc::from);
    Route { decision, token: identity.token, refused, who, user }
}

/// The backend a user id goes to under `snap`, as the `route` command reports it.
pub fn route_user(snap: &Snapshot, service: Service, user: &str) -> Decision {
    let cfg = &snap.config;
    routing::decide(&rollout(cfg), cfg.services.get(service), Subject::User(user), || 0)
}

fn rollout(cfg: &Config) -> Rollout<'_> {
    Rollout {
        percentage: cfg.rollout.percentage,
        seed: &cfg.rollout.hash_seed,
        force: cfg.rollout.force,
        anonymous: cfg.identity.anonymous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_url_tokens() {
        assert_eq!(signed_url_token("/storage/v1/object/sign/b/k.png", Some("token=abc&x=1")), Some("abc"));
        assert_eq!(signed_url_token("/storage/v1/render/image/sign/b/k", Some("width=3&token=t")), Some("t"));
        assert_eq!(signed_url_token("/storage/v1/object/public/b/k", Some("token=abc")), None);
        assert_eq!(signed_url_token("/storage/v1/object/sign/b/k", None), None);
    }
}
