//! The routing state: one immutable [`Snapshot`] behind an `ArcSwap`. A request loads
//! it once and uses that snapshot throughout, so a change is atomic per request and
//! the request path takes no lock. Connection pools are not in here: they belong to
//! the upstream client and survive every swap.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::handoff::fence::Fence;
use crate::identity::{Keyring, Verifier};
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
    /// Prepares a snapshot on its own (no keys fetched for it: a command's, a test's).
    pub fn new(config: Config) -> Snapshot {
        Snapshot::with_keys(config, Keyring::new())
    }

    /// Prepares a snapshot that reads the projects' published keys from `keyring`
    /// (secrets and keys parsed once here, not per request).
    pub fn with_keys(config: Config, keyring: Arc<Keyring>) -> Snapshot {
        let verifier = Verifier::new(&config.backends, config.identity.jwt_leeway, keyring.clone());
        let translator = Translator::new(&config, keyring);
        Snapshot { config, verifier, translator, fence: None }
    }
}

/// The current snapshot, and the published keys every snapshot reads.
pub struct State {
    current: ArcSwap<Snapshot>,
    keyring: Arc<Keyring>,
}

impl State {
    /// Starts with `config`.
    pub fn new(config: Config) -> State {
        let keyring = Keyring::new();
        let state = State { current: ArcSwap::from_pointee(Snapshot::with_keys(config, keyring.clone())), keyring };
        state.configure_keys();
        state
    }

    /// Tells the keyring where each project's keys are in the snapshot in force. Done
    /// once it is in force, not when a snapshot is built: a key fetch it asks for
    /// then reads the new place (and a snapshot never stored moves nothing).
    fn configure_keys(&self) {
        for (id, backend) in self.current.load().config.backends.iter() {
            self.keyring.configure(id, &format!("{:?}", backend.keys.jwks));
        }
    }

    /// The projects' published keys, as fetched for this process.
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// A snapshot of `config` for this process (reading its published keys).
    pub fn snapshot(&self, config: Config) -> Snapshot {
        Snapshot::with_keys(config, self.keyring.clone())
    }

    /// A snapshot of `config` with a handoff's `fence` standing.
    pub fn fenced(&self, config: Config, fence: Arc<Fence>) -> Snapshot {
        Snapshot { fence: Some(fence), ..self.snapshot(config) }
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot; requests already running keep the one they loaded.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        self.configure_keys();
    }
}
