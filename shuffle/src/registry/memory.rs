//! In-memory registry: a concurrent map from app to its executors. Lost on restart.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;

use super::{AppId, Error, ExecId, Executor, Registry};

/// Registrations held in memory only.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    apps: DashMap<AppId, HashMap<ExecId, Arc<Executor>>>,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Registry for MemoryRegistry {
    fn insert(&self, executor: Arc<Executor>) -> Result<(), Error> {
        self.apps
            .entry(executor.app_id.clone())
            .or_default()
            .insert(executor.exec_id.clone(), executor);
        Ok(())
    }

    fn get(&self, app: &str, exec: &str) -> Option<Arc<Executor>> {
        self.apps.get(app)?.get(exec).cloned()
    }

    fn executors_of(&self, app: &str) -> Vec<Arc<Executor>> {
        self.apps
            .get(app)
            .map(|execs| execs.values().cloned().collect())
            .unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.apps.iter().map(|app| app.value().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(app: &str, exec: &str, dir: &str) -> Arc<Executor> {
        Arc::new(Executor {
            app_id: app.into(),
            exec_id: exec.into(),
            local_dirs: vec![dir.to_owned()],
            resolved_dirs: vec![dir.into()],
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "sort".to_owned(),
        })
    }

    #[test]
    fn insert_get_replace_and_list() {
        let reg = MemoryRegistry::new();
        assert!(reg.is_empty());
        reg.insert(exec("a", "1", "/x")).unwrap();
        reg.insert(exec("a", "2", "/y")).unwrap();
        reg.insert(exec("b", "1", "/z")).unwrap();
        assert_eq!(reg.len(), 3);
        assert_eq!(reg.get("a", "2").unwrap().local_dirs, ["/y"]);
        assert!(reg.get("a", "3").is_none());
        assert!(reg.get("c", "1").is_none());
        // A later registration of the same pair replaces the earlier one.
        reg.insert(exec("a", "2", "/w")).unwrap();
        assert_eq!(reg.len(), 3);
        assert_eq!(reg.get("a", "2").unwrap().local_dirs, ["/w"]);
        let mut ids: Vec<_> = reg
            .executors_of("a")
            .iter()
            .map(|e| e.exec_id.0.clone())
            .collect();
        ids.sort();
        assert_eq!(ids, ["1", "2"]);
        assert!(reg.executors_of("nope").is_empty());
    }
}
