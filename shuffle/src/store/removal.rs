//! The one removal path: an application's registrations and files (driver-termination
//! endpoint, driver-pod watch, idle sweep), an executor's non-shuffle files when it is gone,
//! and the orphan sweep of `blockmgr-*` dirs nobody registered. Every deletion goes through
//! [`cleanup`](super::cleanup): inside the roots only, never through a symlink.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tracing::{info, warn};

use super::cleanup::{self, Reclaimed};
use super::{Error, Store};

/// What removing one application did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AppRemoval {
    /// The application.
    pub app_id: String,
    /// Registrations dropped.
    pub executors: usize,
    /// Files and bytes deleted.
    pub reclaimed: Reclaimed,
    /// Dirs that could not be deleted (with why); the registrations are dropped anyway.
    pub errors: Vec<String>,
}

/// How the orphan sweep behaves.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// A `blockmgr-*` dir no registered executor owns is removed once nothing in it changed
    /// for this long (an executor creates its dir a moment before it registers).
    pub orphan_grace: Duration,
    /// A registered app whose files have not changed for this long is removed (`None`:
    /// never).
    pub app_idle: Option<Duration>,
    /// Most dirs and apps removed by one sweep; the rest wait for the next one.
    pub max_removals: usize,
    /// Only report what would be removed.
    pub dry_run: bool,
    /// How deep under a root `blockmgr-*` dirs are looked for.
    pub max_depth: usize,
}

/// Something one sweep may reclaim.
enum Candidate {
    /// A `blockmgr-*` dir no registered executor owns, unchanged for the grace period.
    Orphan(PathBuf),
    /// A registered app whose files did not change for the idle period.
    IdleApp(String),
}

/// What one sweep found and did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    /// Orphan dirs removed (or, in a dry run, that would be).
    pub orphan_dirs: Vec<PathBuf>,
    /// Idle apps removed (or that would be).
    pub idle_apps: Vec<String>,
    /// Candidates left for a later sweep by the rate limit.
    pub deferred: usize,
    /// Files and bytes deleted.
    pub reclaimed: Reclaimed,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl Store {
    /// Whether canonical `dir` is strictly inside an allowed root.
    pub(super) fn inside_roots(&self, dir: &Path) -> bool {
        self.roots
            .iter()
            .any(|root| dir.starts_with(root) && dir != root)
    }

    /// Deletes a whole directory tree after re-checking it is inside the roots.
    fn delete_tree(&self, dir: &Path) -> std::io::Result<Reclaimed> {
        if !self.inside_roots(dir) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is not inside an allowed root", dir.display()),
            ));
        }
        let mut reclaimed = Reclaimed::default();
        let fd = match cleanup::open_dir(dir) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(reclaimed),
            Err(e) => return Err(e),
        };
        cleanup::prune(fd.as_fd(), &|_| true, &mut reclaimed)?;
        drop(fd);
        std::fs::remove_dir(dir)?;
        reclaimed.dirs += 1;
        self.index.invalidate_under(dir);
        self.files.invalidate_under(dir);
        Ok(reclaimed)
    }

    /// Removes application `app`: drops its registrations (durably) and deletes every
    /// registered dir of its executors. `Ok(None)` when the app is not registered.
    ///
    /// # Errors
    /// When the registry cannot record the removal (nothing is deleted then).
    pub fn remove_app(&self, app: &str) -> Result<Option<AppRemoval>, Error> {
        let executors = self.registry.remove_app(app)?;
        if executors.is_empty() {
            return Ok(None);
        }
        let mut removal = AppRemoval {
            app_id: app.to_owned(),
            executors: executors.len(),
            reclaimed: Reclaimed::default(),
            errors: Vec::new(),
        };
        for executor in &executors {
            for dir in &executor.resolved_dirs {
                match self.delete_tree(dir) {
                    Ok(r) => removal.reclaimed.add(&r),
                    Err(e) => {
                        warn!(app, dir = %dir.display(), error = %e, "cannot delete an app's dir");
                        removal.errors.push(format!("{}: {e}", dir.display()));
                    }
                }
            }
        }
        metrics::counter!("kshuffle_apps_removed_total").increment(1);
        metrics::counter!("kshuffle_cleanup_reclaimed_bytes_total")
            .increment(removal.reclaimed.bytes);
        info!(
            app,
            executors = removal.executors,
            files = removal.reclaimed.files,
            bytes = removal.reclaimed.bytes,
            "application removed"
        );
        Ok(Some(removal))
    }

    /// An executor ended: deletes its files other than shuffle `.index`/`.data` (and
    /// `rdd_*` blocks when `keep_rdd`), as Spark's standalone worker does with
    /// `spark.storage.cleanupFilesAfterExecutorExit`. The registration stays: its shuffle
    /// output is still served.
    ///
    /// # Errors
    /// `UnknownExecutor`.
    pub fn executor_gone(&self, app: &str, exec: &str, keep_rdd: bool) -> Result<Reclaimed, Error> {
        let executor = self.executor(app, exec)?;
        let doomed = move |name: &str| {
            let shuffle = name.starts_with("shuffle_")
                && (name.ends_with(".index") || name.ends_with(".data"));
            let rdd = keep_rdd && name.starts_with("rdd_");
            !(shuffle || rdd)
        };
        let mut reclaimed = Reclaimed::default();
        for dir in &executor.resolved_dirs {
            if !self.inside_roots(dir) {
                continue;
            }
            let result = cleanup::open_dir(dir)
                .and_then(|fd| cleanup::prune(fd.as_fd(), &doomed, &mut reclaimed).map(|_| ()));
            if let Err(e) = result
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(app, exec, dir = %dir.display(), error = %e, "executor cleanup failed");
            }
        }
        metrics::counter!("kshuffle_cleanup_reclaimed_bytes_total").increment(reclaimed.bytes);
        info!(
            app,
            exec,
            files = reclaimed.files,
            bytes = reclaimed.bytes,
            "executor files cleaned"
        );
        Ok(reclaimed)
    }

    /// One orphan sweep at time `now` (see [`SweepOptions`]).
    pub fn sweep(&self, options: &SweepOptions, now: SystemTime) -> SweepReport {
        let mut report = SweepReport {
            dry_run: options.dry_run,
            ..SweepReport::default()
        };
        let mut budget = options.max_removals;
        let registered: HashSet<PathBuf> = self
            .registry
            .all()
            .iter()
            .flat_map(|e| e.resolved_dirs.clone())
            .collect();
        let age = |dir: &Path| -> Option<Duration> {
            let fd = cleanup::open_dir(dir).ok()?;
            let newest = cleanup::newest_mtime(fd.as_fd()).ok()?;
            Some(now.duration_since(newest).unwrap_or_default())
        };

        // First what is reclaimable, then one budgeted pass over it.
        let mut candidates = Vec::new();
        for root in &self.roots {
            match cleanup::find_block_manager_dirs(root, options.max_depth) {
                Ok(found) => candidates.extend(
                    found
                        .into_iter()
                        .filter(|d| !registered.contains(d))
                        .filter(|d| age(d).is_some_and(|a| a >= options.orphan_grace))
                        .map(Candidate::Orphan),
                ),
                Err(e) => warn!(root = %root.display(), error = %e, "sweep cannot scan root"),
            }
        }
        if let Some(idle) = options.app_idle {
            for app in self.registry.apps() {
                let dirs: Vec<PathBuf> = self
                    .registry
                    .executors_of(&app.0)
                    .iter()
                    .flat_map(|e| e.resolved_dirs.clone())
                    .collect();
                let youngest = dirs.iter().filter_map(|d| age(d)).min();
                // No dir left to judge by counts as idle only when every dir is gone.
                let all_gone = dirs.iter().all(|d| !d.exists());
                let idle_for = youngest.or(all_gone.then_some(idle));
                if idle_for.is_some_and(|a| a >= idle) {
                    candidates.push(Candidate::IdleApp(app.0));
                }
            }
        }

        let mut orphan_bytes = 0;
        for candidate in candidates {
            if budget == 0 {
                report.deferred += 1;
                continue;
            }
            budget -= 1;
            match candidate {
                Candidate::Orphan(dir) => {
                    if !options.dry_run {
                        match self.delete_tree(&dir) {
                            Ok(r) => {
                                orphan_bytes += r.bytes;
                                report.reclaimed.add(&r);
                            }
                            Err(e) => {
                                warn!(dir = %dir.display(), error = %e, "cannot delete orphan dir");
                                continue;
                            }
                        }
                    }
                    info!(dir = %dir.display(), dry_run = options.dry_run, "orphan block manager dir reclaimed");
                    report.orphan_dirs.push(dir);
                }
                Candidate::IdleApp(app) => {
                    if !options.dry_run {
                        // `remove_app` counts its own reclaimed bytes in the metrics.
                        match self.remove_app(&app) {
                            Ok(Some(removal)) => report.reclaimed.add(&removal.reclaimed),
                            Ok(None) => continue,
                            Err(e) => {
                                warn!(app = %app, error = %e, "cannot remove idle app");
                                continue;
                            }
                        }
                    }
                    info!(app = %app, dry_run = options.dry_run, "idle application reclaimed");
                    report.idle_apps.push(app);
                }
            }
        }
        metrics::counter!("kshuffle_sweep_runs_total").increment(1);
        if !options.dry_run {
            metrics::counter!("kshuffle_cleanup_reclaimed_bytes_total").increment(orphan_bytes);
            metrics::counter!("kshuffle_orphan_dirs_reclaimed_total")
                .increment(report.orphan_dirs.len() as u64);
        }
        report
    }
}
