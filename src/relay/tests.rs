//! The relay's own account of how a connection ended (the access log's `close_code` and
//! `closed_by`, the byte counts) with real sockets on both sides.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Outcome, Relay, RelaySettings};
use crate::backend::Backend;
use crate::conns::{ConnTable, Registration};
use crate::metrics::CloseOrigin;
use crate::stream::Stream;
use crate::ws::frame::{write_header, Opcode};

const SETTINGS: RelaySettings = RelaySettings {
    idle_timeout: None,
    ping_interval: None,
    ping_timeout: Duration::from_secs(10),
    backend_ping_interval: None,
    max_message: 0,
    rsv_allowed: 0,
};

/// A connected pair: (the proxy's end, the peer's end).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (ours, _) = l.accept().await.unwrap();
    (ours, peer)
}

/// A registered relay, not started; with the client's and the backend's ends.
async fn relay(settings: RelaySettings) -> (Relay, Registration, TcpStream, TcpStream) {
    let (c, client) = pair().await;
    let (b, backend) = pair().await;
    let table = Arc::new(ConnTable::default());
    let reg = table.register(Backend::for_test("127.0.0.1:1", 1), (Arc::from("l"), 0), 0, crate::clock::now_ms());
    let Ok(relay) = Relay::new(Stream::Tcp(c), Stream::Tcp(b), reg.shared.clone(), settings, &[], &[], None) else {
        panic!("no early bytes: the relay starts");
    };
    (relay, reg, client, backend)
}

/// Starts a relay; returns its task and the client's and the backend's ends.
async fn start(settings: RelaySettings) -> (tokio::task::JoinHandle<Outcome>, TcpStream, TcpStream) {
    let (relay, reg, client, backend) = relay(settings).await;
    let task = tokio::spawn(async move {
        let _reg = reg;
        relay.run().await
    });
    (task, client, backend)
}

/// The first `cut` bytes of an unmasked binary frame of `len` bytes.
fn partial_frame(len: usize, cut: usize) -> Vec<u8> {
    let mut h = [0u8; 14];
    let n = write_header(&mut h, true, Opcode::Binary, None, len as u64);
    let mut v = h[..n].to_vec();
    v.resize(n + len, 0x5a);
    v.truncate(cut);
    v
}

async fn outcome(task: tokio::task::JoinHandle<Outcome>, limit: Duration) -> Outcome {
    tokio::time::timeout(limit, task).await.expect("the relay ended in time").unwrap()
}

#[tokio::test]
async fn a_backend_dying_mid_frame_is_logged_as_1006_from_the_backend() {
    let (task, _client, mut backend) = start(SETTINGS).await;
    let half = partial_frame(1000, 104);
    backend.write_all(&half).await.unwrap();
    drop(backend);
    // No close could be sent: the relay ends at once (well within the 5 s close grace).
    let out = outcome(task, Duration::from_millis(2500)).await;
    assert_eq!((out.code, out.origin), (1006, CloseOrigin::Backend));
    assert_eq!((out.bytes_b2c, out.bytes_c2b), (half.len() as u64, 0));
}

#[tokio::test]
async fn a_backend_dying_between_frames_gets_the_client_1011_logged_as_sent() {
    let (task, mut client, mut backend) = start(SETTINGS).await;
    let whole = partial_frame(10, 12);
    backend.write_all(&whole).await.unwrap();
    drop(backend);
    let mut got = vec![0u8; whole.len() + 4];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..whole.len()], &whole[..]);
    assert_eq!(&got[whole.len()..], &[0x88, 25, 0x03, 0xf3], "close 1011, not masked");
    drop(client);
    let out = outcome(task, Duration::from_secs(10)).await;
    assert_eq!((out.code, out.origin), (1011, CloseOrigin::Proxy));
}

#[tokio::test]
async fn a_close_that_could_not_be_sent_is_not_logged_as_sent() {
    // Both directions sit inside a frame when the idle timeout strikes: no close frame can go
    // either way, and the relay ends when the close grace does, saying so.
    let settings = RelaySettings {
        idle_timeout: Some(Duration::from_millis(200)),
        ..SETTINGS
    };
    let (task, mut client, mut backend) = start(settings).await;
    backend.write_all(&partial_frame(1000, 50)).await.unwrap();
    let mut h = [0u8; 14];
    let n = write_header(&mut h, true, Opcode::Binary, Some([1, 2, 3, 4]), 1000);
    client.write_all(&h[..n]).await.unwrap();
    let out = outcome(task, Duration::from_secs(10)).await;
    assert_eq!((out.code, out.origin), (1006, CloseOrigin::Proxy));
}

/// What every idle connection's task holds: the relay once, not twice (an `async fn` taking
/// `self` would store it as its argument and again as its body's local), and a relay that
/// does not grow unnoticed (every byte here is a byte per idle connection).
#[tokio::test]
async fn an_idle_relay_holds_its_state_once() {
    let (relay, _reg, _client, _backend) = relay(SETTINGS).await;
    let relay_size = std::mem::size_of::<Relay>();
    let run = relay.run();
    assert_eq!(std::mem::size_of_val(&run), relay_size);
    assert!(relay_size <= 540, "Relay is {relay_size} bytes");
}
