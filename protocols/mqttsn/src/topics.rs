//! Topic ids (§6.5–§6.7): the per-client registry of normal topic ids and
//! the gateway-wide predefined ids.
//!
//! Names here are as the client sees them, without the mountpoint; the
//! channel adds the mountpoint on the way into the core and strips it on
//! the way out.
//!
//! Invariants: dynamic ids are in `FIRST_DYNAMIC_ID..=0xFFFE` (0x0000 and
//! 0xFFFF are reserved, §5.3.11); an id names one topic for the life of the
//! registry; the registry holds at most `max` topics.

use std::collections::HashMap;
use std::sync::Arc;

/// First id handed out by REGISTER/REGACK (DESIGN §2: dynamic ids from 1025,
/// leaving 1–1024 for predefined ids by convention).
pub const FIRST_DYNAMIC_ID: u16 = 1025;

/// Last usable topic id (0xFFFF is reserved, §5.3.11).
const LAST_ID: u16 = 0xFFFE;

/// One client's registered topic names (§6.5), both directions.
#[derive(Debug, Clone)]
pub struct Registry {
    by_id: HashMap<u16, Arc<str>>,
    by_name: HashMap<Arc<str>, u16>,
    next: u16,
    max: usize,
}

impl Registry {
    /// An empty registry holding at most `max` topics.
    pub fn new(max: usize) -> Registry {
        Registry {
            by_id: HashMap::new(),
            by_name: HashMap::new(),
            next: FIRST_DYNAMIC_ID,
            max: max.min(usize::from(LAST_ID - FIRST_DYNAMIC_ID) + 1),
        }
    }

    /// The id of `name`, registering it if new. `None` when full.
    pub fn register(&mut self, name: &str) -> Option<u16> {
        if let Some(&id) = self.by_name.get(name) {
            return Some(id);
        }
        if self.by_id.len() >= self.max {
            return None;
        }
        // Ids are never reused within a registry while it has room: walk
        // forward from the last one handed out, wrapping within the range.
        let mut id = self.next;
        while self.by_id.contains_key(&id) {
            id = if id == LAST_ID {
                FIRST_DYNAMIC_ID
            } else {
                id + 1
            };
        }
        self.next = if id == LAST_ID {
            FIRST_DYNAMIC_ID
        } else {
            id + 1
        };
        let name: Arc<str> = name.into();
        self.by_id.insert(id, name.clone());
        self.by_name.insert(name, id);
        Some(id)
    }

    /// The name registered under `id`.
    pub fn name(&self, id: u16) -> Option<&Arc<str>> {
        self.by_id.get(&id)
    }

    /// The id registered for `name`.
    pub fn id(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    /// Forget `id` (the client answered "invalid topic id" for it).
    pub fn remove(&mut self, id: u16) {
        if let Some(name) = self.by_id.remove(&id) {
            self.by_name.remove(&name);
        }
    }

    /// Number of registered topics.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Predefined topic ids (§6.7), from configuration, shared by every client.
#[derive(Debug, Clone, Default)]
pub struct Predefined {
    by_id: HashMap<u16, Arc<str>>,
    by_name: HashMap<Arc<str>, u16>,
}

impl Predefined {
    /// From (id, topic name) pairs; configuration validation has checked
    /// that ids are unique, in 1..=0xFFFE, and names are valid.
    pub fn new(pairs: impl IntoIterator<Item = (u16, String)>) -> Predefined {
        let mut p = Predefined::default();
        for (id, name) in pairs {
            let name: Arc<str> = name.into();
            p.by_name.entry(name.clone()).or_insert(id);
            p.by_id.insert(id, name);
        }
        p
    }

    /// The topic name of a predefined id.
    pub fn name(&self, id: u16) -> Option<&Arc<str>> {
        self.by_id.get(&id)
    }

    /// The predefined id of a topic name.
    pub fn id(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_1025_and_are_stable() {
        let mut r = Registry::new(3);
        assert_eq!(r.register("a/b"), Some(1025));
        assert_eq!(r.register("c"), Some(1026));
        assert_eq!(r.register("a/b"), Some(1025));
        assert_eq!(r.register("d"), Some(1027));
        assert_eq!(r.register("e"), None, "full");
        r.remove(1026);
        assert_eq!(r.register("e"), Some(1028));
        assert_eq!(r.name(1025).map(|n| &**n), Some("a/b"));
        assert_eq!(r.id("e"), Some(1028));
        assert_eq!(r.len(), 3);
    }
}
