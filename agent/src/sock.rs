//! TCP keepalive on every agent socket (data plane and control plane, both ends), so a peer
//! that vanished without a word (node powered off, link cut, NAT state dropped) is noticed by
//! the kernel even where no application timer is running.
//!
//! The values: first probe after [`KEEPALIVE_IDLE`] without traffic, then every
//! [`KEEPALIVE_INTERVAL`], the connection reset after [`KEEPALIVE_PROBES`] unanswered probes:
//! a dead peer is detected within 10 + 5 × 3 = 25 s, below the data plane's default inactivity
//! timeout (30 s), which stays the bound for a peer that is alive but sends nothing.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Idle time before the first keepalive probe (`TCP_KEEPIDLE`).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between unanswered probes (`TCP_KEEPINTVL`).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel resets the connection (`TCP_KEEPCNT`).
pub const KEEPALIVE_PROBES: u32 = 3;

/// Turns on `SO_KEEPALIVE` with the values above on a connected (or listening) TCP socket:
/// a `std` or a `tokio` `TcpStream`.
pub fn keepalive<S: std::os::fd::AsFd>(s: &S) -> io::Result<()> {
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    SockRef::from(s).set_tcp_keepalive(&ka)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// The options as the kernel reports them (getsockopt), on one socket.
    fn read_back<S: std::os::fd::AsFd>(s: &S) -> (bool, Duration, Duration, u32) {
        let r = SockRef::from(s);
        (
            r.keepalive().unwrap(),
            r.tcp_keepalive_time().unwrap(),
            r.tcp_keepalive_interval().unwrap(),
            r.tcp_keepalive_retries().unwrap(),
        )
    }

    const WANT: (bool, Duration, Duration, u32) = (true, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES);

    #[test]
    fn both_ends_of_a_connection_read_back_the_keepalive_options() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        assert!(!read_back(&client).0, "keepalive was on before it was set");
        keepalive(&client).unwrap();
        keepalive(&server).unwrap();
        assert_eq!(read_back(&client), WANT);
        assert_eq!(read_back(&server), WANT);
    }

    #[tokio::test]
    async fn tokio_sockets_read_back_the_keepalive_options() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        keepalive(&client).unwrap();
        keepalive(&server).unwrap();
        assert_eq!(read_back(&client), WANT);
        assert_eq!(read_back(&server), WANT);
    }
}
