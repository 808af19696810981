//! Response bodies read into buffers that are used again.
//!
//! A list page is about a megabyte. Reading each into a fresh allocation made
//! glibc map (or trim and re-fault) a megabyte per page: ~45,000 page faults
//! and a fifth of a run's CPU in the kernel per 100,000 expenses. A body is
//! read into a buffer from a small pool and handed on as [`Bytes`] that give
//! the buffer back when the last view of the page is dropped (after the run
//! has turned the page into rows).

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Buffers kept for reuse: the pages a run holds at once (requests in
/// flight, the queue, the page being turned into rows) stay below this.
const KEPT: usize = 8;
/// A buffer larger than this is not kept (one unusual body must not pin memory).
const KEPT_CAPACITY: usize = 8 * 1024 * 1024;

/// A shared pool of body buffers.
#[derive(Debug, Clone, Default)]
pub(crate) struct BodyPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BodyPool {
    /// An empty buffer, with room for `size` bytes when the size is known.
    pub(crate) fn buffer(&self, size: Option<u64>) -> Vec<u8> {
        let mut buf = self
            .free
            .lock()
            .expect("not poisoned")
            .pop()
            .unwrap_or_default();
        if let Some(size) = size.and_then(|s| usize::try_from(s).ok()) {
            // Only what the header promises up front; a lying header costs a regrowth.
            buf.reserve(size.min(KEPT_CAPACITY));
        }
        buf
    }

    /// `buf` as bytes that return it to this pool when dropped.
    pub(crate) fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() > KEPT_CAPACITY {
            return;
        }
        buf.clear();
        let mut free = self.free.lock().expect("not poisoned");
        if free.len() < KEPT {
            free.push(buf);
        }
    }

    #[cfg(test)]
    fn kept(&self) -> Vec<usize> {
        let free = self.free.lock().expect("not poisoned");
        free.iter().map(Vec::capacity).collect()
    }
}

/// A body buffer on loan to a [`Bytes`].
struct Pooled {
    buf: Vec<u8>,
    pool: BodyPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_returns_to_the_pool_when_the_last_view_of_its_bytes_is_dropped() {
        let pool = BodyPool::default();
        let mut buf = pool.buffer(Some(1000));
        assert!(buf.capacity() >= 1000);
        buf.extend_from_slice(b"{\"data\": []}");
        let bytes = pool.freeze(buf);
        let slice = bytes.slice(1..5);
        assert_eq!(&bytes[..], b"{\"data\": []}");
        drop(bytes);
        assert!(pool.kept().is_empty(), "a slice still holds the page");
        assert_eq!(&slice[..], b"\"dat");
        drop(slice);
        let kept = pool.kept();
        assert_eq!(kept.len(), 1);
        assert!(kept[0] >= 1000);
        // The same memory serves the next body, empty.
        let again = pool.buffer(None);
        assert!(again.is_empty() && again.capacity() >= 1000);
        assert!(pool.kept().is_empty());
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_buffers_of_bounded_size() {
        let pool = BodyPool::default();
        let views: Vec<Bytes> = (0..KEPT + 3)
            .map(|_| pool.freeze(pool.buffer(Some(64))))
            .collect();
        drop(views);
        assert_eq!(pool.kept().len(), KEPT);
        let pool = BodyPool::default();
        let mut huge = pool.buffer(None);
        huge.reserve(KEPT_CAPACITY + 1);
        drop(pool.freeze(huge));
        assert!(
            pool.kept().is_empty(),
            "an outsized buffer is freed, not kept"
        );
        // A header promising more than the cap reserves no more than the cap.
        assert!(pool.buffer(Some(u64::MAX)).capacity() <= KEPT_CAPACITY);
    }
}
