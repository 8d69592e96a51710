//! Which server holds each id: the ids in servers' statuses (kept from the server watch) and
//! the ones this operator just gave out. A server whose label claims an id another server
//! holds (a manifest copied from another server, or a forged one) gets an id of its own; the
//! holder is never displaced.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

/// Id → a hash of the holder's key (`namespace/name`): about 24 bytes an id.
#[derive(Default)]
pub struct IdsHeld(Mutex<HashMap<i64, u64>>);

fn hash(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl IdsHeld {
    /// Records that server `key` holds `id`, unless another server does; returns whether
    /// `key` holds it now.
    pub fn hold(&self, id: i64, key: &str) -> bool {
        let mut held = self.0.lock().expect("ids lock");
        let holder = *held.entry(id).or_insert_with(|| hash(key));
        holder == hash(key)
    }

    /// Server `key` is gone: the ids it held are free of it (they are never given out again).
    pub fn release(&self, id: i64, key: &str) {
        let mut held = self.0.lock().expect("ids lock");
        if held.get(&id) == Some(&hash(key)) {
            held.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("ids lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_holder_keeps_its_id() {
        let held = IdsHeld::default();
        assert!(held.hold(6, "acme/srv-6"));
        assert!(held.hold(6, "acme/srv-6"), "holding again is fine");
        assert!(!held.hold(6, "acme/forged"), "a second claim is refused");
        held.release(6, "acme/forged");
        assert!(!held.hold(6, "acme/forged"), "only the holder releases");
        held.release(6, "acme/srv-6");
        assert!(held.is_empty());
    }
}
