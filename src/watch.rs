//! Triggers for config reloads: a watcher on the config file's DIRECTORY (editors and
//! Kubernetes ConfigMaps replace files by rename or symlink swap, which a watch on the
//! file itself would miss), debounced, and SIGHUP. Changes to other files in that
//! directory (logs, say) are not reloads: each would rebuild the routing state and
//! start the token cache afresh.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
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
    let _ = control.reload(trigger).await;
}

/// Watches the directory of `path` and reloads on changes until `shutdown`.
pub fn watch_file(path: &Path, control: Arc<Control>, shutdown: CancellationToken) -> notify::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let file = path.file_name().unwrap_or(OsStr::new("")).to_os_string();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // A failed event may have been about the config: reloading costs little.
        let relevant = event.map_or(true, |e| !matches!(e.kind, EventKind::Access(_)) && concerns(&e.paths, &file));
        if relevant {
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

/// Whether a change to `paths` can change the config read from the file named
/// `file`: that file, a TOML file beside it (a schema map), or the hidden `..data`
/// entries through which a Kubernetes ConfigMap swaps its files. An event naming no
/// path (the watcher lost track) counts too.
fn concerns(paths: &[PathBuf], file: &OsStr) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| {
            let name = p.file_name().unwrap_or_default();
            name == file || name.as_encoded_bytes().starts_with(b"..") || p.extension() == Some(OsStr::new("toml"))
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_that_can_touch_the_config_reload_it() {
        let file = OsStr::new("switchyard.toml");
        let at = |names: &[&str]| names.iter().map(|n| Path::new("/etc/switchyard").join(n)).collect::<Vec<_>>();
        assert!(concerns(&at(&["switchyard.toml"]), file));
        assert!(concerns(&at(&["switchyard.tmp", "switchyard.toml"]), file), "a rename over it");
        assert!(concerns(&at(&["schema-map.toml"]), file));
        assert!(concerns(&at(&["..data_tmp"]), file), "a ConfigMap swap");
        assert!(concerns(&at(&["..2026_11_25_10_00_00.123"]), file));
        assert!(concerns(&[], file));
        assert!(!concerns(&at(&["switchyard.log"]), file));
        assert!(!concerns(&at(&["access.log", ".switchyard.toml.swp"]), file));
    }
}
