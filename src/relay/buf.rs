//! Relay buffers: taken from a per-thread free list when a socket has data, given back as
//! soon as everything read has been written, so an idle connection holds none.

use std::cell::RefCell;

/// Size of one relay buffer.
pub const BUF_SIZE: usize = 32 * 1024;
/// Free buffers kept per thread; more are returned to the allocator. Small: a buffer is held
/// only while its bytes are in flight, so few are out at once per thread, and what the list
/// keeps stays resident for good (64 was up to 2 MiB per worker after any burst).
const POOL_MAX: usize = 16;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8; BUF_SIZE]>>> = const { RefCell::new(Vec::new()) };
}

/// A relay buffer that returns to its thread's free list when dropped.
pub struct Buf(Option<Box<[u8; BUF_SIZE]>>);

impl Buf {
    /// No storage (an idle direction).
    pub const fn empty() -> Buf {
        Buf(None)
    }

    /// Makes sure storage is held, taking it from the free list if needed.
    pub fn ensure(&mut self) {
        if self.0.is_none() {
            *self = Buf::take();
        }
    }

    /// Gives the storage back to the free list.
    pub fn release(&mut self) {
        drop(std::mem::replace(self, Buf(None)));
    }

    /// Takes a buffer from the free list, or allocates one.
    pub fn take() -> Buf {
        let b = FREE.with(|f| f.borrow_mut().pop());
        Buf(Some(b.unwrap_or_else(|| {
            // Allocate on the heap directly; a 32 KiB array must not transit the stack.
            let v = vec![0u8; BUF_SIZE].into_boxed_slice();
            match v.try_into() {
                Ok(b) => b,
                Err(_) => unreachable!("length is BUF_SIZE"),
            }
        })))
    }
}

/// Frees every buffer on this thread's free list (after load dropped: what the list keeps
/// would otherwise stay resident however long the thread stays idle).
pub fn release_free_list() {
    let _ = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        f.clear();
        f.shrink_to_fit();
    });
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Some(b) => &b[..],
            None => &[],
        }
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Some(b) => &mut b[..],
            None => &mut [],
        }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            // try_with: during thread teardown the list may be gone; then just free it.
            let _ = FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < POOL_MAX {
                    f.push(b);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare() -> usize {
        FREE.with(|f| f.borrow().len())
    }

    #[test]
    fn free_list_is_bounded_and_released() {
        // a thread of its own: the list is per thread
        std::thread::spawn(|| {
            let bufs: Vec<Buf> = (0..POOL_MAX + 4).map(|_| Buf::take()).collect();
            assert_eq!(spare(), 0);
            drop(bufs);
            assert_eq!(spare(), POOL_MAX);
            // a taken buffer comes from the list
            let b = Buf::take();
            assert_eq!(spare(), POOL_MAX - 1);
            drop(b);
            release_free_list();
            assert_eq!(spare(), 0);
            assert_eq!(FREE.with(|f| f.borrow().capacity()), 0);
        })
        .join()
        .unwrap();
    }
}
