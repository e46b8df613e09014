//! Two balancer instances with the same config (backend lists in different orders) make the
//! same choices: a `hash` key lands on the same backend through either, and a sticky cookie
//! issued by one is honoured by the other. This is what lets N instances sit behind an L4
//! spreader that sends a client's connections to any of them.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::http::{get, http_backend, roundtrip};
use common::*;
use tokio::net::TcpStream;

/// Two pools on the same three backends: `/h` hashes the `X-Key` header, `/s` is round robin
/// with a sticky cookie. `order` is the order the backends are listed in.
fn yaml(order: &[SocketAddr]) -> String {
    let list = |out: &mut String| {
        for a in order {
            out.push_str(&format!("      - address: \"{a}\"\n"));
        }
    };
    let mut y = String::from(
        "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: { path_prefix: /h }\n        pool: h\n      - match: { path_prefix: /s }\n        pool: s\npools:\n  h:\n    algorithm: hash\n    hash: { key: \"header:x-key\" }\n    backends:\n",
    );
    list(&mut y);
    y.push_str("  s:\n    algorithm: round_robin\n    sticky: { cookie: SYID, secret: \"shared-secret\" }\n    backends:\n");
    list(&mut y);
    y
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn new(addr: SocketAddr) -> Client {
        Client {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// (body, Set-Cookie) of `GET path` with extra header lines.
    async fn get(&mut self, path: &str, extra: &str) -> (String, Option<String>) {
        let r = roundtrip(&mut self.s, &mut self.buf, &get(path, extra)).await.expect("an answer");
        assert_eq!(r.status, 200, "{r:?}");
        (r.body.clone(), r.header("set-cookie").map(str::to_string))
    }
}

#[tokio::test]
async fn two_instances_send_a_hash_key_to_the_same_backend_whatever_the_list_order() {
    bounded(async {
        let bs = [http_backend("a").await, http_backend("b").await, http_backend("c").await];
        let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
        let one = Proxy::start(&yaml(&addrs));
        let two = Proxy::start(&yaml(&[addrs[2], addrs[0], addrs[1]]));
        let (mut c1, mut c2) = (Client::new(one.addr).await, Client::new(two.addr).await);
        let mut spread: HashMap<String, usize> = HashMap::new();
        let mut differ = Vec::new();
        for k in 0..10_000 {
            let key = format!("X-Key: user-{k}\r\n");
            let (n1, _) = c1.get("/h/x", &key).await;
            let (n2, _) = c2.get("/h/x", &key).await;
            if n1 != n2 {
                differ.push((k, n1.clone(), n2));
            }
            *spread.entry(n1).or_default() += 1;
        }
        assert!(
            differ.is_empty(),
            "{} of 10,000 keys differ, first {:?}",
            differ.len(),
            &differ[..differ.len().min(5)]
        );
        // A ring that sent everything to one backend would agree trivially: the keys spread.
        assert_eq!(spread.len(), 3, "{spread:?}");
        assert!(spread.values().all(|&n| n > 2_000), "{spread:?}");
    })
    .await;
}

#[tokio::test]
async fn a_sticky_cookie_issued_by_one_instance_is_honoured_by_the_other() {
    bounded(async {
        let bs = [http_backend("a").await, http_backend("b").await, http_backend("c").await];
        let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
        let one = Proxy::start(&yaml(&addrs));
        let two = Proxy::start(&yaml(&[addrs[1], addrs[2], addrs[0]]));
        let (mut c1, mut c2) = (Client::new(one.addr).await, Client::new(two.addr).await);
        let mut names = HashMap::new();
        for i in 0..60 {
            let (n1, set) = c1.get("/s/poll", "").await;
            let set = set.unwrap_or_else(|| panic!("client {i}: no cookie from the first instance"));
            let value = set.split(';').next().unwrap().to_string();
            // The same client, now sent by the spreader to the other instance.
            let (n2, again) = c2.get("/s/poll", &format!("Cookie: {value}\r\n")).await;
            assert_eq!(n2, n1, "client {i}: cookie {value} went elsewhere");
            assert_eq!(again, None, "client {i}: a valid cookie is not re-issued");
            *names.entry(n1).or_insert(0) += 1;
        }
        // Round robin spread the first answers, so agreement is the cookie's doing.
        assert_eq!(names.len(), 3, "{names:?}");
    })
    .await;
}
