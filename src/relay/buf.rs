//! Relay buffers: taken from a per-thread free list when a socket has data, given back as
//! soon as everything read has been written, so an idle connection holds none. A direction
//! that moves bulk data (its reads fill a whole buffer) gets a four times larger one: a
//! quarter of the reads, writes and wake-ups per byte. How many of those one thread has out
//! at once is bounded, so many stalled bulk connections cannot multiply memory by four.

use std::cell::{Cell, RefCell};
use std::thread::LocalKey;

/// Size of a relay buffer for ordinary traffic.
pub const BUF_SIZE: usize = 32 * 1024;
/// Size of a relay buffer for a direction moving bulk data. 128 KiB: 64 KiB echo through the
/// proxy, one worker, 1.53–1.61 GB/s with 32 KiB buffers, 2.23–2.25 with 128 KiB, no better
/// with 256 KiB (2.02–2.26).
pub const BULK_BUF_SIZE: usize = 128 * 1024;
/// Bulk buffers one thread may have out at once (8 MiB); past it, bulk directions get
/// ordinary ones.
const BULK_MAX_OUT: usize = 64;
/// Free buffers kept per thread; more are returned to the allocator. Small: a buffer is held
/// only while its bytes are in flight, so few are out at once per thread, and what the list
/// keeps stays resident for good (64 was up to 2 MiB per worker after any burst).
const POOL_MAX: usize = 16;
/// Free bulk buffers kept per thread (512 KiB).
const BULK_POOL_MAX: usize = 4;

type Small = Box<[u8; BUF_SIZE]>;
type Bulk = Box<[u8; BULK_BUF_SIZE]>;

thread_local! {
    static FREE: RefCell<Vec<Small>> = const { RefCell::new(Vec::new()) };
    static FREE_BULK: RefCell<Vec<Bulk>> = const { RefCell::new(Vec::new()) };
    static BULK_OUT: Cell<usize> = const { Cell::new(0) };
}

/// A relay buffer that returns to its thread's free list when dropped.
pub struct Buf(Held);

enum Held {
    None,
    Small(Small),
    Bulk(Bulk),
}

/// A zeroed array on the heap (it must not transit the stack).
fn boxed<const N: usize>() -> Box<[u8; N]> {
    match vec![0u8; N].into_boxed_slice().try_into() {
        Ok(b) => b,
        Err(_) => unreachable!("length is N"),
    }
}

impl Buf {
    /// No storage (an idle direction).
    pub const fn empty() -> Buf {
        Buf(Held::None)
    }

    /// Makes sure storage is held, taking an ordinary buffer from the free list if needed.
    pub fn ensure(&mut self) {
        self.ensure_for(false);
    }

    /// Makes sure storage is held; a buffer taken now is a bulk one when `bulk` and this
    /// thread has fewer than [`BULK_MAX_OUT`] out (a held buffer is kept as it is).
    pub fn ensure_for(&mut self, bulk: bool) {
        if matches!(self.0, Held::None) {
            *self = Buf::take(bulk);
        }
    }

    /// Holds a bulk buffer.
    #[cfg(test)]
    pub fn is_bulk(&self) -> bool {
        matches!(self.0, Held::Bulk(_))
    }

    /// Gives the storage back to the free list.
    pub fn release(&mut self) {
        drop(std::mem::replace(self, Buf::empty()));
    }

    /// Takes a buffer from the free list, or allocates one: a bulk one when asked for and
    /// fewer than [`BULK_MAX_OUT`] are out.
    pub fn take(bulk: bool) -> Buf {
        if bulk && BULK_OUT.with(Cell::get) < BULK_MAX_OUT {
            BULK_OUT.with(|n| n.set(n.get() + 1));
            let b = FREE_BULK.with(|f| f.borrow_mut().pop());
            return Buf(Held::Bulk(b.unwrap_or_else(boxed)));
        }
        let b = FREE.with(|f| f.borrow_mut().pop());
        Buf(Held::Small(b.unwrap_or_else(boxed)))
    }
}

/// Frees every buffer on this thread's free lists (after load dropped: what the lists keep
/// would otherwise stay resident however long the thread stays idle).
pub fn release_free_list() {
    clear(&FREE);
    clear(&FREE_BULK);
}

/// Frees every buffer on `list` and its room.
fn clear<T>(list: &'static LocalKey<RefCell<Vec<T>>>) {
    let _ = list.try_with(|f| {
        let mut f = f.borrow_mut();
        f.clear();
        f.shrink_to_fit();
    });
}

/// Puts `b` on `list` unless that holds `max` already; then, or when the list is gone
/// (thread teardown), `b` is freed.
fn keep<T>(list: &'static LocalKey<RefCell<Vec<T>>>, b: T, max: usize) {
    let _ = list.try_with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < max {
            f.push(b);
        }
    });
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Held::None => &[],
            Held::Small(b) => &b[..],
            Held::Bulk(b) => &b[..],
        }
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Held::None => &mut [],
            Held::Small(b) => &mut b[..],
            Held::Bulk(b) => &mut b[..],
        }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.0, Held::None) {
            Held::None => {}
            Held::Small(b) => keep(&FREE, b, POOL_MAX),
            Held::Bulk(b) => {
                // Saturating: a buffer dropped on another thread than it was taken on.
                let _ = BULK_OUT.try_with(|n| n.set(n.get().saturating_sub(1)));
                keep(&FREE_BULK, b, BULK_POOL_MAX);
            }
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
            let bufs: Vec<Buf> = (0..POOL_MAX + 4).map(|_| Buf::take(false)).collect();
            assert_eq!(spare(), 0);
            drop(bufs);
            assert_eq!(spare(), POOL_MAX);
            // a taken buffer comes from the list
            let b = Buf::take(false);
            assert_eq!(spare(), POOL_MAX - 1);
            drop(b);
            release_free_list();
            assert_eq!(spare(), 0);
            assert_eq!(FREE.with(|f| f.borrow().capacity()), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn bulk_buffers_are_bounded_per_thread_and_come_back() {
        std::thread::spawn(|| {
            let bulk: Vec<Buf> = (0..BULK_MAX_OUT + 3).map(|_| Buf::take(true)).collect();
            assert_eq!(bulk.iter().filter(|b| b.is_bulk()).count(), BULK_MAX_OUT);
            assert_eq!(bulk[0].len(), BULK_BUF_SIZE);
            assert_eq!(bulk[BULK_MAX_OUT].len(), BUF_SIZE, "past the bound: an ordinary buffer");
            drop(bulk);
            assert_eq!(BULK_OUT.with(Cell::get), 0);
            assert_eq!(FREE_BULK.with(|f| f.borrow().len()), BULK_POOL_MAX);
            let mut b = Buf::empty();
            b.ensure_for(true);
            assert!(b.is_bulk() && b.len() == BULK_BUF_SIZE);
            // a held buffer is kept as it is
            b.ensure_for(false);
            assert!(b.is_bulk());
            b.release();
            b.ensure_for(false);
            assert_eq!(b.len(), BUF_SIZE);
            drop(b);
            release_free_list();
            assert_eq!(FREE_BULK.with(|f| f.borrow().capacity()), 0);
        })
        .join()
        .unwrap();
    }
}
