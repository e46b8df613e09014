//! A prototype, not part of Switchyard: a one-thread TCP relay on io_uring, to measure what the
//! kernel crossings of an epoll relay cost (issue 14: "an io_uring relay is a larger step:
//! propose it with a prototype's numbers before building it").
//!
//! Shape: one ring; a multishot accept on the listener; per connection a nonblocking backend
//! socket connected through the ring, then one multishot `recv` per side that takes its
//! buffers from a shared provided-buffer ring (an idle connection holds no buffer, like
//! Switchyard's relay); each received buffer is sent to the other side (one send in flight
//! per direction, the rest queued in order) and handed back to the ring when sent. All
//! submissions and completions of one loop turn share one `io_uring_enter`.
//!
//! It parses nothing (a byte relay, like `haproxy-tcp` in compare.sh): the point is the
//! system-call cost, which a frame parser on top would not change.
//!
//! Usage: `uring-relay LISTEN_ADDR BACKEND_ADDR` (for example `127.0.0.1:20202 127.0.0.1:20201`).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

const BUF_SIZE: usize = 16 * 1024;
const BUF_COUNT: u16 = 2048; // a power of two; 32 MiB in all
const BGID: u16 = 7;

const K_ACCEPT: u64 = 1;
const K_CONNECT: u64 = 2;
const K_RECV: u64 = 3;
const K_SEND: u64 = 4;

fn ud(kind: u64, conn: usize, dir: usize) -> u64 {
    kind << 56 | (conn as u64) << 8 | dir as u64
}
fn un(ud: u64) -> (u64, usize, usize) {
    (ud >> 56, ((ud >> 8) & 0xffff_ffff) as usize, (ud & 0xff) as usize)
}

/// The provided-buffer ring: `BUF_COUNT` entries the kernel takes buffers from.
struct BufRing {
    ring: *mut u8,
    mem: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring) -> io::Result<BufRing> {
        let bytes = BUF_COUNT as usize * 16;
        // SAFETY: anonymous private mapping, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut br = BufRing {
            ring: p as *mut u8,
            mem: vec![0u8; BUF_SIZE * BUF_COUNT as usize],
            tail: 0,
        };
        // SAFETY: the mapping lives as long as the process.
        unsafe { ring.submitter().register_buf_ring_with_flags(p as u64, BUF_COUNT, BGID, 0)? };
        for bid in 0..BUF_COUNT {
            br.put(bid);
        }
        br.publish();
        Ok(br)
    }

    fn addr(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < BUF_COUNT.
        unsafe { self.mem.as_ptr().add(bid as usize * BUF_SIZE) as *mut u8 }
    }

    /// Writes buffer `bid` into the next free entry (published by `publish`).
    fn put(&mut self, bid: u16) {
        let idx = (self.tail & (BUF_COUNT - 1)) as usize;
        // SAFETY: idx < BUF_COUNT; entry layout is io_uring_buf {addr u64, len u32, bid u16, resv u16}.
        unsafe {
            let e = self.ring.add(idx * 16);
            (e as *mut u64).write(self.addr(bid) as u64);
            (e.add(8) as *mut u32).write(BUF_SIZE as u32);
            (e.add(12) as *mut u16).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // The tail is the `resv` field of entry 0.
        // SAFETY: aligned u16 inside the mapping.
        let t = unsafe { &*(self.ring.add(14) as *const AtomicU16) };
        t.store(self.tail, Ordering::Release);
    }
}

#[derive(Default)]
struct Dir {
    queue: VecDeque<(u16, u32, u32)>, // (bid, offset, len) waiting to be sent
    sending: bool,
    recv_armed: bool,
    starved: bool, // recv ended for lack of buffers: re-arm when some come back
    eof: bool,     // the reading side sent FIN
    shut: bool,    // FIN passed on
}

struct Conn {
    fd: [RawFd; 2], // 0: client, 1: backend
    dir: [Dir; 2],  // 0: client -> backend, 1: backend -> client
    inflight: u32,
    dead: bool,
}

struct Relay {
    ring: IoUring,
    bufs: BufRing,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    backend: libc::sockaddr_in,
    returned: bool,
    starved: Vec<(usize, usize)>,
}

impl Relay {
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every pointer in the entries outlives the operation (buffers in `bufs`, the
        // backend address in `self`).
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                self.ring.submit().expect("submit");
            }
        }
    }

    fn arm_recv(&mut self, c: usize, d: usize) {
        let conn = self.conns[c].as_mut().unwrap();
        if conn.dead || conn.dir[d].recv_armed || conn.dir[d].eof {
            return;
        }
        conn.dir[d].recv_armed = true;
        conn.dir[d].starved = false;
        conn.inflight += 1;
        let fd = conn.fd[d];
        self.push(opcode::RecvMulti::new(types::Fd(fd), BGID).build().user_data(ud(K_RECV, c, d)));
    }

    fn start_send(&mut self, c: usize, d: usize) {
        let conn = self.conns[c].as_mut().unwrap();
        if conn.dead || conn.dir[d].sending {
            return;
        }
        let Some(&(bid, off, len)) = conn.dir[d].queue.front() else {
            if conn.dir[d].eof && !conn.dir[d].shut {
                conn.dir[d].shut = true;
                // SAFETY: plain syscall on our descriptor.
                unsafe { libc::shutdown(conn.fd[1 - d], libc::SHUT_WR) };
                if conn.dir[1 - d].shut {
                    self.kill(c);
                }
            }
            return;
        };
        conn.dir[d].sending = true;
        conn.inflight += 1;
        let fd = conn.fd[1 - d];
        // SAFETY: inside buffer `bid`.
        let p = unsafe { self.bufs.addr(bid).add(off as usize) };
        self.push(opcode::Send::new(types::Fd(fd), p, len).build().user_data(ud(K_SEND, c, d)));
    }

    fn kill(&mut self, c: usize) {
        let conn = self.conns[c].as_mut().unwrap();
        if !conn.dead {
            conn.dead = true;
            for fd in conn.fd {
                if fd >= 0 {
                    // Ends the multishot receives (they complete with 0).
                    // SAFETY: plain syscall on our descriptor.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
            }
        }
        self.maybe_free(c);
    }

    fn maybe_free(&mut self, c: usize) {
        let Some(conn) = self.conns[c].as_mut() else { return };
        if !conn.dead || conn.inflight > 0 {
            return;
        }
        let conn = self.conns[c].take().unwrap();
        for d in conn.dir {
            for (bid, _, _) in d.queue {
                self.bufs.put(bid);
                self.returned = true;
            }
        }
        for fd in conn.fd {
            if fd >= 0 {
                // SAFETY: our descriptor, no operation in flight on it.
                unsafe { libc::close(fd) };
            }
        }
        self.free.push(c);
    }

    fn on_accept(&mut self, res: i32) {
        if res < 0 {
            return;
        }
        // SAFETY: plain syscalls; failures close what was opened.
        let b = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if b < 0 {
            unsafe { libc::close(res) };
            return;
        }
        let one: libc::c_int = 1;
        unsafe {
            libc::setsockopt(b, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one as *const _ as *const _, 4);
        }
        let conn = Conn {
            fd: [res, b],
            dir: Default::default(),
            inflight: 1,
            dead: false,
        };
        let c = match self.free.pop() {
            Some(c) => {
                self.conns[c] = Some(conn);
                c
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        let addr = &self.backend as *const libc::sockaddr_in as *const libc::sockaddr;
        self.push(
            opcode::Connect::new(types::Fd(b), addr, std::mem::size_of::<libc::sockaddr_in>() as u32)
                .build()
                .user_data(ud(K_CONNECT, c, 0)),
        );
    }

    fn complete(&mut self, e: cqueue::Entry) {
        let (kind, c, d) = un(e.user_data());
        let res = e.result();
        match kind {
            K_ACCEPT => self.on_accept(res),
            K_CONNECT => {
                let conn = self.conns[c].as_mut().unwrap();
                conn.inflight -= 1;
                if res < 0 {
                    self.kill(c);
                } else {
                    self.arm_recv(c, 0);
                    self.arm_recv(c, 1);
                }
            }
            K_RECV => {
                let more = cqueue::more(e.flags());
                let conn = self.conns[c].as_mut().unwrap();
                if !more {
                    conn.dir[d].recv_armed = false;
                    conn.inflight -= 1;
                }
                if res > 0 {
                    let bid = cqueue::buffer_select(e.flags()).expect("buffer");
                    if conn.dead {
                        self.bufs.put(bid);
                        self.returned = true;
                    } else {
                        conn.dir[d].queue.push_back((bid, 0, res as u32));
                        self.start_send(c, d);
                    }
                    if !more {
                        self.arm_recv(c, d);
                    }
                } else if res == -libc::ENOBUFS {
                    conn.dir[d].starved = true;
                    self.starved.push((c, d));
                } else if res == 0 {
                    conn.dir[d].eof = true;
                    self.start_send(c, d);
                } else {
                    self.kill(c);
                }
                self.maybe_free(c);
            }
            K_SEND => {
                let conn = self.conns[c].as_mut().unwrap();
                conn.inflight -= 1;
                conn.dir[d].sending = false;
                if res < 0 {
                    self.kill(c);
                    return;
                }
                let front = conn.dir[d].queue.front_mut().unwrap();
                if (res as u32) < front.2 {
                    front.1 += res as u32;
                    front.2 -= res as u32;
                } else {
                    let (bid, _, _) = conn.dir[d].queue.pop_front().unwrap();
                    self.bufs.put(bid);
                    self.returned = true;
                }
                if self.conns[c].as_ref().unwrap().dead {
                    self.maybe_free(c);
                } else {
                    self.start_send(c, d);
                }
            }
            _ => unreachable!(),
        }
    }

    fn run(&mut self, listener: RawFd) -> io::Result<()> {
        self.push(opcode::AcceptMulti::new(types::Fd(listener)).build().user_data(ud(K_ACCEPT, 0, 0)));
        let mut batch: Vec<cqueue::Entry> = Vec::with_capacity(1024);
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            batch.extend(self.ring.completion());
            for e in batch.drain(..) {
                if un(e.user_data()).0 == K_ACCEPT && !cqueue::more(e.flags()) {
                    self.push(opcode::AcceptMulti::new(types::Fd(listener)).build().user_data(ud(K_ACCEPT, 0, 0)));
                }
                self.complete(e);
            }
            if self.returned {
                self.returned = false;
                self.bufs.publish();
                for (c, d) in std::mem::take(&mut self.starved) {
                    if self.conns[c].as_ref().is_some_and(|k| k.dir[d].starved) {
                        self.arm_recv(c, d);
                    }
                }
            }
        }
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: uring-relay LISTEN_ADDR BACKEND_ADDR");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("listen address");
    let backend: SocketAddr = args[2].parse().expect("backend address");
    let SocketAddr::V4(b4) = backend else { panic!("IPv4 backend only") };
    let backend = libc::sockaddr_in {
        sin_family: libc::AF_INET as _,
        sin_port: b4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*b4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let listener = TcpListener::bind(listen)?;
    let one: libc::c_int = 1;
    // Accepted sockets inherit TCP_NODELAY from the listener.
    // SAFETY: plain syscall on our descriptor.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const _,
            4,
        );
    }
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_defer_taskrun()
        .build(8192)?;
    let bufs = BufRing::new(&ring)?;
    let mut relay = Relay {
        ring,
        bufs,
        conns: Vec::new(),
        free: Vec::new(),
        backend,
        returned: false,
        starved: Vec::new(),
    };
    eprintln!("uring-relay: {listen} -> {}", args[2]);
    relay.run(listener.as_raw_fd())
}
