//! Triggers for config reloads: a watcher on the config file's DIRECTORY (editors and
//! Kubernetes ConfigMaps replace files by rename or symlink swap, which a watch on the
//! file itself would miss), debounced, and SIGHUP.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::Control;

/// Quiet time after the last file event before reloading: one save is often several
/// events (truncate, write, rename), and a ConfigMap update several renames.
const DEBOUNCE: Duration = Duration::from_millis(150);

async fn reload(control: &Arc<Control>, trigger: &'static str) {
    let control = control.clone();
    // Reading the file is blocking I/O.
    let _ = tokio::task::spawn_blocking(move || control.reload(trigger)).await;
}

/// Watches the directory of `path` and reloads on changes until `shutdown`.
pub fn watch_file(path: &Path, control: Arc<Control>, shutdown: CancellationToken) -> notify::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !matches!(e.kind, EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        let _watcher = watcher; // dropping it stops the watch
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = rx.recv() => if event.is_none() { break },
            }
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            reload(&control, "file").await;
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
