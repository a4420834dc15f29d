//! What the upstream pools hold, for `/_warden/status` (hyper's pool exposes no figures).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Pools listed on the status page; further destinations are folded into one row.
const MAX_POOLS: usize = 64;
const OTHER: &str = "other";

#[derive(Default, Clone)]
struct PoolRow {
    open: u64,
    opened: u64,
    reused: u64,
    http2: bool,
}

#[derive(Default)]
pub(crate) struct PoolStats {
    rows: Mutex<BTreeMap<String, PoolRow>>,
}

impl PoolStats {
    fn with_row(&self, key: &str, f: impl FnOnce(&mut PoolRow)) {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let key = if rows.contains_key(key) || rows.len() < MAX_POOLS - 1 {
            key
        } else {
            OTHER
        };
        match rows.get_mut(key) {
            Some(row) => f(row),
            None => {
                let mut row = PoolRow::default();
                f(&mut row);
                rows.insert(key.to_owned(), row);
            }
        }
    }

    /// A new upstream connection; the guard marks it closed when dropped.
    pub(crate) fn opened(self: &Arc<Self>, key: String, http2: bool) -> OpenGuard {
        self.with_row(&key, |row| {
            row.open += 1;
            row.opened += 1;
            row.http2 |= http2;
        });
        OpenGuard {
            stats: self.clone(),
            key,
        }
    }

    pub(crate) fn reused(&self, key: &str) {
        self.with_row(key, |row| row.reused += 1);
    }

    pub(crate) fn describe(&self) -> serde_json::Value {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let list: Vec<_> = rows
            .iter()
            .map(|(key, row)| {
                serde_json::json!({
                    "upstream": key,
                    "open": row.open,
                    "opened": row.opened,
                    "reused": row.reused,
                    "http2": row.http2,
                })
            })
            .collect();
        serde_json::Value::Array(list)
    }
}

pub(crate) struct OpenGuard {
    stats: Arc<PoolStats>,
    key: String,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.stats
            .with_row(&self.key, |row| row.open = row.open.saturating_sub(1));
    }
}
