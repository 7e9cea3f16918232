//! Changes to named files, seen through watches on their directories: editors,
//! certbot and Kubernetes replace files by rename or symlink swap, which a watch on a
//! file itself would miss. Only events naming a watched file (or a `..` entry, through
//! which a Kubernetes ConfigMap or Secret swaps its files) count, so a busy log beside
//! them wakes nothing. Changes coalesce into one pending signal (no queue to grow), and
//! a burst settles after a quiet spell or a bound, whichever comes first.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Quiet time after the last event before a change counts as done: one save is often
/// several events (truncate, write, rename), and a renewal or a ConfigMap update
/// several renames.
const QUIET: Duration = Duration::from_millis(150);
/// The longest a burst may put its change off: a file rewritten without pause is
/// still read.
const AT_MOST: Duration = Duration::from_secs(1);

/// Which entries of the watched directories count.
#[derive(Debug)]
struct Names {
    files: Vec<OsString>,
    /// Any file with this extension counts too.
    extension: Option<&'static str>,
}

/// A watch on some files; dropping it ends the watch.
pub struct Changes {
    signal: Arc<Notify>,
    _watcher: RecommendedWatcher,
}

impl Changes {
    /// Watches `files` (and, with `extension`, every such file beside them).
    pub fn watch(files: &[&Path], extension: Option<&'static str>) -> notify::Result<Changes> {
        let names =
            Names { files: files.iter().map(|f| f.file_name().unwrap_or_default().to_owned()).collect(), extension };
        let mut dirs: Vec<PathBuf> = files.iter().map(|f| directory(f)).collect();
        dirs.sort();
        dirs.dedup();
        let signal = Arc::new(Notify::new());
        let tx = signal.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // A failed event may have been about a watched file: reading it again costs little.
            if event.map_or(true, |e| !matches!(e.kind, EventKind::Access(_)) && names.concern(&e.paths)) {
                tx.notify_one();
            }
        })?;
        for dir in &dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(Changes { signal, _watcher: watcher })
    }

    /// Waits for the next change, then until it has settled.
    pub async fn settled(&self) {
        self.signal.notified().await;
        let quiet = async { while tokio::time::timeout(QUIET, self.signal.notified()).await.is_ok() {} };
        let _ = tokio::time::timeout(AT_MOST, quiet).await;
    }
}

/// The directory a file's path names (`.` for a bare file name).
fn directory(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl Names {
    /// Whether an event about `paths` can change what the watched files hold. An event
    /// naming no path (the watcher lost track) counts.
    fn concern(&self, paths: &[PathBuf]) -> bool {
        paths.is_empty()
            || paths.iter().any(|p| {
                let name = p.file_name().unwrap_or_default();
                self.files.iter().any(|f| f == name)
                    || name.as_encoded_bytes().starts_with(b"..")
                    || self.extension.is_some_and(|x| p.extension() == Some(OsStr::new(x)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(names: &[&str]) -> Vec<PathBuf> {
        names.iter().map(|n| Path::new("/etc/switchyard").join(n)).collect()
    }

    #[test]
    fn only_events_about_the_watched_files_count() {
        let config = Names { files: vec!["switchyard.toml".into()], extension: Some("toml") };
        assert!(config.concern(&at(&["switchyard.toml"])));
        assert!(config.concern(&at(&["switchyard.tmp", "switchyard.toml"])), "a rename over it");
        assert!(config.concern(&at(&["schema-map.toml"])));
        assert!(config.concern(&at(&["..data_tmp"])), "a ConfigMap swap");
        assert!(config.concern(&at(&["..2026_11_25_10_00_00.123"])));
        assert!(config.concern(&[]));
        assert!(!config.concern(&at(&["switchyard.log"])));
        assert!(!config.concern(&at(&["access.log", ".switchyard.toml.swp"])));

        let tls = Names { files: vec!["tls.crt".into(), "tls.key".into()], extension: None };
        assert!(tls.concern(&at(&["tls.key"])));
        assert!(tls.concern(&at(&["tls.crt.tmp", "tls.crt"])));
        assert!(tls.concern(&at(&["..data"])), "a Secret swap");
        assert!(!tls.concern(&at(&["access.log"])), "a busy log beside the certificate");
        assert!(!tls.concern(&at(&["other.toml"])));
    }

    #[test]
    fn directories_of_bare_and_nested_names() {
        assert_eq!(directory(Path::new("cert.pem")), PathBuf::from("."));
        assert_eq!(directory(Path::new("/etc/tls/cert.pem")), PathBuf::from("/etc/tls"));
    }

    #[tokio::test]
    async fn a_burst_settles_once_and_a_busy_file_beside_wakes_nothing() {
        let dir = std::env::temp_dir().join(format!("switchyard-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("watched.pem");
        std::fs::write(&file, "one").unwrap();
        let changes = Changes::watch(&[&file], None).unwrap();
        // A log beside it, written for longer than a settle takes: nothing is signalled.
        for i in 0..40 {
            std::fs::write(dir.join("access.log"), format!("{i}")).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let none = tokio::time::timeout(Duration::from_millis(500), changes.settled()).await;
        assert!(none.is_err(), "a file beside the watched one signalled a change");
        // A file rewritten without pause: the change still settles, within the bound.
        let writer = {
            let file = file.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    std::fs::write(&file, format!("{i}")).unwrap();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let settled = tokio::time::timeout(Duration::from_secs(3), changes.settled()).await;
        writer.abort();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(settled.is_ok(), "a burst put its change off for good");
    }
}
