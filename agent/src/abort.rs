//! How a disk stream that failed on the primary ends, so that the target learns of it at once
//! rather than after its inactivity timeout.
//!
//! - The stream failed on the wire (the sink, i.e. the connection, refused a write): the target
//!   ended it (a corrupt frame, its file system full, its agent killed), and its reason is
//!   waiting in the connection for the sender to read ([`crate::data::send`] does).
//! - It failed here (the source disk could not be read, the agent was stopped): the sender
//!   resets the connection ([`reset`]: `SO_LINGER` 0, so closing it sends an RST and drops
//!   whatever was still queued), and the target's next read fails with "connection reset"
//!   instead of waiting for bytes that will never come; it removes its partial dump and
//!   reports. The sender's own error is the one it returns.

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use diskstream_engine::Error;
use diskstream_orchestrator::node::TransferError;

/// Whether `e` is a failure of the sink named `sink` (the connection to the target), as
/// opposed to one on this node.
pub fn on_the_wire(e: &TransferError, sink: &Path) -> bool {
    matches!(e.engine_error(), Some(Error::Io { path, .. }) if path == sink)
}

/// Makes the coming close of `sock` an abortive one (an RST, queued data dropped).
pub fn reset(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpListener;

    #[test]
    fn a_reset_connection_fails_the_peers_read_at_once() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        server.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        client.write_all(b"some frames").unwrap();
        reset(&client);
        drop(client);
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let mut got = 0;
        let err = loop {
            match server.read(&mut buf) {
                Ok(0) => panic!("a clean end of stream, not a reset"),
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        assert!(got <= 11);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }

    #[test]
    fn only_the_sinks_own_io_errors_are_on_the_wire() {
        let io = |path: &str| {
            TransferError::Engine(Error::Io {
                op: "write",
                path: path.into(),
                offset: 0,
                source: std::io::Error::from(ErrorKind::BrokenPipe),
            })
        };
        let sink = Path::new("node2:inst1/disk0 to node3");
        assert!(on_the_wire(&io("node2:inst1/disk0 to node3"), sink));
        assert!(!on_the_wire(&io("/dev/vg/disk0"), sink));
        assert!(!on_the_wire(&TransferError::Engine(Error::Cancelled), sink));
    }
}
