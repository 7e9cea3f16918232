//! Triggers for config reloads: changes to the config file (through a watch on its
//! directory, see [`files`]) and SIGHUP. Changes to other files in that directory
//! (logs, say) are not reloads: each would rebuild the routing state and start the
//! token cache afresh.

pub mod files;

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::control::Control;
use files::Changes;

async fn reload(control: &Arc<Control>, trigger: &'static str) {
    let _ = control.reload(trigger).await;
}

/// Watches `path` (and the `.toml` files beside it: a schema map) and reloads on
/// changes until `shutdown`.
pub fn watch_file(path: &Path, control: Arc<Control>, shutdown: CancellationToken) -> notify::Result<()> {
    let changes = Changes::watch(&[path], Some("toml"))?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changes.settled() => reload(&control, "file").await,
            }
        }
    });
    Ok(())
}

/// Reloads on every SIGHUP until `shutdown`.
pub fn on_sighup(control: Arc<Control>, shutdown: CancellationToken) -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                got = hup.recv() => match got {
                    Some(()) => reload(&control, "sighup").await,
                    None => break,
                },
            }
        }
    });
    Ok(())
}
