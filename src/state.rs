//! The routing state: one immutable [`Snapshot`] behind an `ArcSwap`. A request loads
//! it once and uses that snapshot throughout, so a change is atomic per request and
//! the request path takes no lock. Connection pools are not in here: they belong to
//! the upstream client and survive every swap.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::handoff::fence::Fence;
use crate::identity::Verifier;
use crate::translate::Translator;

/// Everything a request needs to be routed, prepared once per configuration.
pub struct Snapshot {
    /// The validated configuration.
    pub config: Config,
    /// Bearer-token checks built from the backends' keys and secrets.
    pub verifier: Verifier,
    /// Credential and name translation for the other project.
    pub translator: Translator,
    /// A handoff's fence: the moving band's writes are held while it stands.
    pub fence: Option<Arc<Fence>>,
}

impl Snapshot {
    /// Prepares a snapshot (keys parsed once here, not per request).
    pub fn new(config: Config) -> Snapshot {
        let verifier = Verifier::new(&config.backends, config.identity.jwt_leeway);
        let translator = Translator::new(&config);
        Snapshot { config, verifier, translator, fence: None }
    }

    /// A snapshot of `config` with `fence` standing.
    pub fn fenced(config: Config, fence: Arc<Fence>) -> Snapshot {
        Snapshot { fence: Some(fence), ..Snapshot::new(config) }
    }
}

/// The current snapshot.
pub struct State {
    current: ArcSwap<Snapshot>,
}

impl State {
    /// Starts with `config`.
    pub fn new(config: Config) -> State {
        State { current: ArcSwap::from_pointee(Snapshot::new(config)) }
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot; requests already running keep the one they loaded.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}
