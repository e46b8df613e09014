//! A real DNS server for discovery tests: hickory-server answering from an in-memory zone
//! `sy.test.` on 127.0.0.1:0 (UDP, and TCP on the same port when it is free), run on a
//! thread of its own (the balancer's start-up lookup blocks the caller's thread). The test
//! changes the records while it runs, switches every answer to `SERVFAIL`, or stops it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::authority::{AuthorityObject, Catalog, MessageResponseBuilder, ZoneType};
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;

/// The zone the server is authoritative for.
pub const ZONE: &str = "sy.test.";
/// TTL of every record (the balancer must not need it to see changes: it refreshes).
const TTL: u32 = 30;

/// How the server fails the queries of one record type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers from the zone.
    None = 0,
    /// `SERVFAIL`.
    ServFail = 1,
    /// `REFUSED`.
    Refused = 2,
    /// No answer at all (the resolver times out).
    Silent = 3,
}

/// Answers from the catalog, or `SERVFAIL` to everything while `servfail` is set, or fails
/// the A or AAAA queries alone as `faults` say (index 0: A, 1: AAAA).
struct Handler {
    catalog: Catalog,
    servfail: Arc<AtomicBool>,
    faults: Arc<[AtomicU8; 2]>,
    queries: Arc<AtomicU32>,
    /// A answers left before every A query gets `SERVFAIL` (negative: no limit).
    a_left: Arc<std::sync::atomic::AtomicI64>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(&self, request: &Request, mut response: R) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::SeqCst);
        let is_a = request.request_info().is_ok_and(|i| i.query.query_type() == RecordType::A);
        let rationed = is_a
            && self
                .a_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n > 0).then(|| n - 1).or((n < 0).then_some(n))
                })
                .is_err();
        let fault = match request.request_info().map(|i| i.query.query_type()) {
            Ok(RecordType::A) if rationed => Fault::ServFail as u8,
            Ok(RecordType::A) => self.faults[0].load(Ordering::SeqCst),
            Ok(RecordType::AAAA) => self.faults[1].load(Ordering::SeqCst),
            _ => Fault::None as u8,
        };
        if fault == Fault::Silent as u8 {
            let mut h = Header::new();
            h.set_response_code(ResponseCode::ServFail);
            return h.into();
        }
        let code = match fault {
            f if f == Fault::ServFail as u8 => Some(ResponseCode::ServFail),
            f if f == Fault::Refused as u8 => Some(ResponseCode::Refused),
            _ if self.servfail.load(Ordering::SeqCst) => Some(ResponseCode::ServFail),
            _ => None,
        };
        if let Some(code) = code {
            let msg = MessageResponseBuilder::from_message_request(request).error_msg(request.header(), code);
            return response.send_response(msg).await.unwrap_or_else(|_| {
                let mut h = Header::new();
                h.set_response_code(ResponseCode::ServFail);
                h.into()
            });
        }
        self.catalog.handle_request(request, response).await
    }
}

/// A running DNS server; stopped on drop.
pub struct Dns {
    /// Where it answers (UDP).
    pub addr: SocketAddr,
    zone: Arc<InMemoryAuthority>,
    servfail: Arc<AtomicBool>,
    faults: Arc<[AtomicU8; 2]>,
    queries: Arc<AtomicU32>,
    a_left: Arc<std::sync::atomic::AtomicI64>,
    serial: AtomicU32,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn name(n: &str) -> Name {
    Name::from_ascii(n).expect("a DNS name")
}

impl Dns {
    /// Starts an empty zone (only its SOA).
    pub fn start() -> Dns {
        let origin = name(ZONE);
        let zone = Arc::new(InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false));
        let servfail = Arc::new(AtomicBool::new(false));
        let faults = Arc::new([AtomicU8::new(0), AtomicU8::new(0)]);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let queries = Arc::new(AtomicU32::new(0));
        let a_left = Arc::new(std::sync::atomic::AtomicI64::new(-1));
        let (z, sf, fl, q, al) = (zone.clone(), servfail.clone(), faults.clone(), queries.clone(), a_left.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let soa = SOA::new(name("ns.sy.test."), name("admin.sy.test."), 1, 60, 60, 60, 0);
                assert!(z.upsert(Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)), 1).await);
                let mut catalog = Catalog::new();
                catalog.upsert(LowerName::new(&origin), vec![z as Arc<dyn AuthorityObject>]);
                let mut server = ServerFuture::new(Handler {
                    catalog,
                    servfail: sf,
                    faults: fl,
                    queries: q,
                    a_left: al,
                });
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let addr = udp.local_addr().unwrap();
                server.register_socket(udp);
                if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                    server.register_listener(tcp, Duration::from_secs(5));
                }
                addr_tx.send(addr).unwrap();
                let _ = stop_rx.await;
                drop(server);
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("the DNS server starts");
        Dns {
            addr,
            zone,
            servfail,
            faults,
            queries,
            a_left,
            serial: AtomicU32::new(1),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn serial(&self) -> u32 {
        self.serial.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn replace(&self, owner: &str, kind: RecordType, records: Vec<Record>) {
        let key = RrKey::new(LowerName::new(&name(owner)), kind);
        self.zone.records_mut().await.remove(&key);
        let serial = self.serial();
        for r in records {
            assert!(self.zone.upsert(r, serial).await, "record added");
        }
    }

    /// Makes `ips` the A (IPv4) and AAAA (IPv6) records of `owner` (none: removes them).
    pub async fn set_addrs(&self, owner: &str, ips: &[&str]) {
        let ips: Vec<IpAddr> = ips.iter().map(|i| i.parse().unwrap()).collect();
        let of = |v4: bool| -> Vec<Record> {
            ips.iter()
                .filter(|ip| ip.is_ipv4() == v4)
                .map(|ip| {
                    let data = match ip {
                        IpAddr::V4(a) => RData::A(A(*a)),
                        IpAddr::V6(a) => RData::AAAA(AAAA(*a)),
                    };
                    Record::from_rdata(name(owner), TTL, data)
                })
                .collect()
        };
        self.replace(owner, RecordType::A, of(true)).await;
        self.replace(owner, RecordType::AAAA, of(false)).await;
    }

    /// Makes `records` — (priority, weight, port, target) — the SRV records of `owner`.
    pub async fn set_srv(&self, owner: &str, records: &[(u16, u16, u16, &str)]) {
        let records = records
            .iter()
            .map(|&(prio, weight, port, target)| {
                Record::from_rdata(name(owner), TTL, RData::SRV(SRV::new(prio, weight, port, name(target))))
            })
            .collect();
        self.replace(owner, RecordType::SRV, records).await;
    }

    /// Answers `SERVFAIL` to everything while `on`.
    pub fn servfail(&self, on: bool) {
        self.servfail.store(on, Ordering::SeqCst);
    }

    /// Answers the next `n` A queries, then `SERVFAIL` to every A query (`None`: no limit).
    pub fn ration_a(&self, n: Option<u32>) {
        self.a_left.store(n.map_or(-1, i64::from), Ordering::SeqCst);
    }

    /// Queries answered (or failed) so far.
    pub fn queries(&self) -> u32 {
        self.queries.load(Ordering::SeqCst)
    }

    /// Fails the A queries (`v6`: the AAAA queries) alone as `fault` says.
    pub fn fault(&self, v6: bool, fault: Fault) {
        self.faults[usize::from(v6)].store(fault as u8, Ordering::SeqCst);
    }

    /// Stops answering: its sockets close (queries go unanswered).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// `resolver:` YAML pointing at this server, with `timeout`.
    pub fn resolver_yaml(&self, timeout: &str) -> String {
        format!("resolver:\n  servers: [\"{}\"]\n  timeout: {timeout}\n", self.addr)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}
