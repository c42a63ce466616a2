//! The endpoint map as the request path reads it: a cheap hash for ids and
//! a per-thread cache of the current map.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Endpoint;

pub(crate) type EndpointMap = HashMap<Arc<str>, Arc<Endpoint>, BuildHasherDefault<IdHasher>>;
pub(crate) type MapStorage = Arc<ArcSwap<EndpointMap>>;
type MapCache = arc_swap::Cache<MapStorage, Arc<EndpointMap>>;

thread_local! {
    /// Per thread, the endpoint map last seen of each registry it used.
    ///
    /// Reading a cached map costs one plain atomic load (to check that it is
    /// still current) instead of arc-swap's two read-modify-writes, which is
    /// a third of the request path's atomic operations (R1). A thread may
    /// keep an outdated map alive until it next uses the registry; the
    /// endpoints in it then refer to tombstones, never to a loaded handler
    /// (R11).
    static MAP_CACHES: RefCell<Vec<(MapStorage, MapCache)>> = const { RefCell::new(Vec::new()) };
}

/// A multiply-rotate hash for endpoint ids, several times cheaper than
/// the default SipHash on the request path. SipHash defends a map against
/// keys chosen to collide; here only the operator inserts ids (config,
/// admin API), so a client cannot fill a bucket.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl IdHasher {
    const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::MULTIPLIER);
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if rest.is_empty() {
            return;
        }
        // The tail without copying it to the stack: copying a few bytes
        // into an 8-byte word and reading the word back defeats the CPU's
        // store forwarding (a stall of about a dozen cycles, a fifth of the
        // request path when measured). An id of 8 bytes or more takes its
        // last 8 bytes in one load, overlapping the last chunk; a shorter
        // one is folded byte by byte.
        let word = match bytes.last_chunk::<8>() {
            Some(last) => u64::from_le_bytes(*last),
            None => rest
                .iter()
                .rev()
                .fold(0, |word, &byte| (word << 8) | u64::from(byte)),
        };
        self.mix(word);
    }

    #[inline]
    fn write_u8(&mut self, byte: u8) {
        self.mix(u64::from(byte));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Runs `read` on this thread's cached copy of the map in `storage`,
/// bringing the copy up to date first (one atomic load when it is).
/// Returns `None` when the cache cannot be used: this thread's locals are
/// being destroyed, or a handler's `Drop` re-entered the registry while the
/// cache was borrowed. The caller then reads `storage` directly.
#[inline]
pub(crate) fn with_cached_map<R>(
    storage: &MapStorage,
    read: impl FnOnce(&EndpointMap) -> R,
) -> Option<R> {
    MAP_CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let position = caches
                .iter()
                .position(|(cached, _)| Arc::ptr_eq(cached, storage));
            let index = match position {
                Some(index) => index,
                None => {
                    // Forget the maps of registries that are gone (only this
                    // entry and its cache still hold their storage).
                    caches.retain(|(cached, _)| Arc::strong_count(cached) > 2);
                    caches.push((
                        Arc::clone(storage),
                        arc_swap::Cache::new(Arc::clone(storage)),
                    ));
                    caches.len() - 1
                }
            };
            Some(read(caches[index].1.load()))
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use std::hash::Hasher;

    use super::IdHasher;

    fn hash(bytes: &[u8]) -> u64 {
        let mut hasher = IdHasher::default();
        hasher.write(bytes);
        hasher.finish()
    }

    #[test]
    fn every_byte_counts_including_a_short_tail() {
        assert_ne!(hash(b"endpoint_1"), hash(b"endpoint_2"));
        assert_ne!(hash(b"abcdefgh"), hash(b"abcdefgh\0"));
        assert_ne!(hash(b"a"), hash(b"b"));
        assert_ne!(hash(b"abcdefghi"), hash(b"abcdefghj"));
        assert_ne!(hash(b"abc"), hash(b"abd"));
        assert_ne!(hash(b"endpoint_7"), hash(b"endpoint_8"));
    }
}
