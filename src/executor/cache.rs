//! The per-worker cache: values that persist across tasks and jobs on one worker.
//!
//! Never shared between workers or replicated; a task that finds nothing computes and stores.

use std::any::Any;
use std::collections::HashMap;

/// Typed key-value store, one per worker.
#[derive(Default)]
pub struct Cache {
    map: HashMap<String, Box<dyn Any>>,
}

impl Cache {
    pub fn get<T: 'static>(&self, key: &str) -> Option<&T> {
        self.map.get(key).and_then(|v| v.downcast_ref())
    }
    pub fn get_mut<T: 'static>(&mut self, key: &str) -> Option<&mut T> {
        self.map.get_mut(key).and_then(|v| v.downcast_mut())
    }
    /// Store `value` under `key`, returning the previous value if it had type `T`.
    pub fn insert<T: 'static>(&mut self, key: &str, value: T) -> Option<T> {
        self.map
            .insert(key.to_string(), Box::new(value))
            .and_then(|old| old.downcast().ok().map(|b| *b))
    }
    pub fn remove(&mut self, key: &str) -> bool {
        self.map.remove(key).is_some()
    }
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }
    /// The value under `key`, created by `f` if absent (or of another type).
    pub fn get_or_insert_with<T: 'static>(&mut self, key: &str, f: impl FnOnce() -> T) -> &mut T {
        let ok = self.map.get(key).is_some_and(|v| v.is::<T>());
        if !ok {
            self.map.insert(key.to_string(), Box::new(f()));
        }
        match self.map.get_mut(key).and_then(|v| v.downcast_mut()) {
            Some(v) => v,
            None => unreachable!("the value was just stored with this type"),
        }
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
