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

    fn remove_app(&self, app: &str) -> Result<Vec<Arc<Executor>>, Error> {
        Ok(self
            .apps
            .remove(app)
            .map(|(_, execs)| execs.into_values().collect())
            .unwrap_or_default())
    }

    fn apps(&self) -> Vec<AppId> {
        self.apps.iter().map(|app| app.key().clone()).collect()
    }

    fn all(&self) -> Vec<Arc<Executor>> {
        self.apps
            .iter()
            .flat_map(|app| app.value().values().cloned().collect::<Vec<_>>())
            .collect()
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
        assert_eq!(reg.all().len(), 3);
        let mut apps = reg.apps();
        apps.sort();
        assert_eq!(apps, [AppId::from("a"), AppId::from("b")]);
        assert_eq!(reg.remove_app("a").unwrap().len(), 2);
        assert!(reg.remove_app("a").unwrap().is_empty());
        assert_eq!((reg.len(), reg.apps()), (1, vec![AppId::from("b")]));
    }
}
