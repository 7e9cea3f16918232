//! switchyard: a percentage-rollout reverse proxy in front of two Supabase projects.
//!
//! The request path, from listener to upstream, is [`server`] → [`proxy::Proxy::handle`]
//! → [`upstream`]. Decisions ([`identity`], [`routing`], [`forward`]) are pure
//! functions; the routing state is one [`state::Snapshot`] behind an `ArcSwap`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod cohort;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod fleet;
pub mod forward;
pub mod guard;
pub mod handoff;
pub mod identity;
pub mod jwk;
pub mod metrics;
pub mod pg;
pub mod proxy;
pub mod rollout_cli;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod spool;
pub mod state;
pub mod translate;
pub mod upstream;
pub mod watch;
