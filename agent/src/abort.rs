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
//!
//! The master then reports the end that failed on its own side ([`explain_send_failure`]).

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use diskstream_engine::Error;
use diskstream_orchestrator::node::{NodeError, TransferError};

use crate::proto::WireError;

/// Whether `e` is a failure of the sink named `sink` (the connection to the target), as
/// opposed to one on this node.
pub fn on_the_wire(e: &TransferError, sink: &Path) -> bool {
    matches!(e.engine_error(), Some(Error::Io { path, .. }) if path == sink)
}

/// Makes the coming close of `sock` an abortive one (an RST, queued data dropped).
pub fn reset(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// The error of the send of `what` from `source` to `target` that failed on the primary with
/// `sender`, with the target's own result if it has one. Of the two ends, the one that failed on
/// its own side ([`WireError::own`]) says why; the other only saw the connection end:
/// - the primary's own failure (its disk, its engine, a stop) is reported as it is;
/// - the target's own failure (a corrupt frame, its file system full) is its refusal;
/// - neither (an agent killed, the link cut): the stream broke, and both ends' views are given.
pub fn explain_send_failure(
    source: &str,
    target: &str,
    what: &str,
    sender: WireError,
    t: Option<WireError>,
) -> NodeError {
    if sender.own {
        return sender.into_node(source);
    }
    match t {
        // The primary read the target's refusal from the connection: said once.
        Some(t) if t.own && sender.msg.contains(&t.msg) => NodeError::Failed(sender.msg),
        Some(t) if t.own => NodeError::Failed(format!(
            "node {target} refused the stream: {} (sender: {})",
            t.msg, sender.msg
        )),
        Some(t) => NodeError::Failed(format!(
            "the stream of {what} from node {source} to node {target} broke: node {source}: {}; node {target}: {}",
            sender.msg, t.msg
        )),
        None => sender.into_node(source),
    }
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

    fn err(msg: &str, own: bool) -> WireError {
        WireError {
            own,
            ..WireError::new("io", msg)
        }
    }

    fn explain(sender: WireError, target: Option<WireError>) -> String {
        explain_send_failure("node2", "node3", "inst1/disk0", sender, target).to_string()
    }

    #[test]
    fn the_primarys_own_failure_is_the_message() {
        // The target only saw the reset that followed: not asked, not mentioned.
        let m = explain(
            err("reading /dev/vg/disk0: source ended early", true),
            Some(err("connection reset", false)),
        );
        assert!(
            m.contains("node node2: reading /dev/vg/disk0: source ended early"),
            "{m}"
        );
        assert!(
            !m.contains("refused") && !m.contains("reset") && !m.contains("node3"),
            "{m}"
        );
    }

    #[test]
    fn the_targets_own_failure_is_its_refusal() {
        let m = explain(
            err("broken pipe", false),
            Some(err("disk0: No space left on device", true)),
        );
        assert!(
            m.starts_with("node node3 refused the stream: disk0: No space left on device"),
            "{m}"
        );
        assert!(m.contains("(sender: broken pipe)"), "{m}");
        // Read back from the connection by the primary already: said once.
        let m = explain(
            err("node node3 refused the stream: frame 4: corrupt", false),
            Some(err("frame 4: corrupt", true)),
        );
        assert_eq!(m.matches("frame 4: corrupt").count(), 1, "{m}");
    }

    #[test]
    fn neither_ends_own_failure_is_a_broken_stream() {
        let m = explain(
            err("agent of node node2: connection closed", false),
            Some(err("connection reset", false)),
        );
        assert!(
            m.contains("the stream of inst1/disk0 from node node2 to node node3 broke"),
            "{m}"
        );
        assert!(
            m.contains("node node2: agent of node node2: connection closed; node node3: connection reset"),
            "{m}"
        );
        assert!(!m.contains("refused"), "{m}");
        // The target has nothing to say (it never saw the stream): the primary's error.
        let m = explain(err("connect for inst1/disk0: timed out", false), None);
        assert!(m.contains("node node2: connect for inst1/disk0: timed out"), "{m}");
    }

    #[test]
    fn own_travels_on_the_wire_and_defaults_to_false() {
        let e = err("x", true);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(serde_json::from_value::<WireError>(v).unwrap(), e);
        let plain = serde_json::to_string(&err("x", false)).unwrap();
        assert!(!plain.contains("own"), "{plain}");
        let old: WireError = serde_json::from_str(r#"{"kind":"io","msg":"x"}"#).unwrap();
        assert!(!old.own);
    }
}
