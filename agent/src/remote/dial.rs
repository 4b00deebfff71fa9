//! One call of the master to an agent on a connection of its own: TCP connect, mutual TLS,
//! HTTP/2, the request and its answer; and the re-dial of a connection that the agent closed
//! before it ever spoke.
//!
//! The agent evicts a handshake in progress to make room for newer ones (`server/admit.rs`).
//! A master behind the same address as a flood (NAT) whose client is slow to send its
//! ClientHello (a loaded master) can be evicted that way, and it only gets in by trying again.
//! A call is tried again only when it cannot have run: the agent's HTTP/2 server sends its
//! SETTINGS before it reads any request, so a connection on which not one byte came from the
//! agent, and which failed by being closed or reset (not by a timeout, a refused connect or a
//! TLS alert), never reached the agent's service. At most [`TRIES`] tries, within the connect
//! timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{KEEPALIVE, MAX_ANSWER};
use crate::proto::{Call, Reply};

/// Tries of one call whose connections the agent closed before it spoke.
pub const TRIES: u32 = 4;

/// The pause before dialing again.
const PAUSE: Duration = Duration::from_millis(50);

/// Why one try failed, and whether another may be made.
struct Failed {
    msg: String,
    /// The agent never spoke on the connection, and closed or reset it: the call did not run.
    again: bool,
}

/// Calls `node`'s agent at `addr` with `call` (`connect`: the time the TCP connect and the TLS
/// handshake may take, each, and the time within which a failed try is made again).
pub(super) async fn call(
    connector: &TlsConnector,
    connect: Duration,
    node: &str,
    addr: &str,
    call: &Call,
) -> Result<Reply, String> {
    let until = Instant::now() + connect;
    let mut tries = 0;
    loop {
        tries += 1;
        match once(connector, connect, node, addr, call).await {
            Ok(r) => return Ok(r),
            Err(f) if f.again && tries < TRIES && Instant::now() + PAUSE < until => {
                tracing::debug!(node, tries, error = %f.msg, "the agent closed the connection before it spoke: dialing again");
                tokio::time::sleep(PAUSE).await;
            }
            Err(f) if tries > 1 => return Err(format!("{} (after {tries} tries)", f.msg)),
            Err(f) => return Err(f.msg),
        }
    }
}

/// Whether `e` is a close or reset by the peer.
fn closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
    )
}

/// Whether a hyper error is the connection's close or reset (its source an I/O error of that
/// kind, or the connection ended under a request in flight).
fn hyper_closed(e: &hyper::Error) -> bool {
    if e.is_canceled() || e.is_closed() || e.is_incomplete_message() {
        return true;
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return closed(io);
        }
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_io() || h2.is_go_away() || h2.is_reset();
        }
        src = s.source();
    }
    false
}

async fn once(
    connector: &TlsConnector,
    connect: Duration,
    node: &str,
    addr: &str,
    call: &Call,
) -> Result<Reply, Failed> {
    let fail = |msg: String| Failed { msg, again: false };
    let tcp = tokio::time::timeout(connect, TcpStream::connect(addr))
        .await
        .map_err(|_| fail(format!("connect timed out after {} s", connect.as_secs())))?
        // Reset (not refused): the port took the connection and dropped it at once.
        .map_err(|e| Failed {
            again: closed(&e),
            msg: format!("connect: {e}"),
        })?;
    let _ = tcp.set_nodelay(true);
    let _ = crate::sock::keepalive(&tcp);
    let name = rustls::pki_types::ServerName::try_from(node.to_string()).map_err(|e| fail(e.to_string()))?;
    let tls = tokio::time::timeout(connect, connector.connect(name, tcp))
        .await
        .map_err(|_| fail("TLS handshake timed out".to_string()))?
        .map_err(|e| Failed {
            again: closed(&e),
            msg: format!("TLS handshake: {e}"),
        })?;
    let heard = Arc::new(AtomicBool::new(false));
    let io = Heard {
        inner: tls,
        heard: Arc::clone(&heard),
    };
    // Once the agent spoke, a failure may follow a call that ran: never tried again.
    let unheard = |msg: String, closed: bool| Failed {
        again: closed && !heard.load(Ordering::Relaxed),
        msg,
    };
    // HTTP/2 pings keep a long call (a disk transfer) honest: an agent that stops answering
    // (its node is down, the link is cut) fails the call instead of hanging the export.
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| unheard(format!("HTTP/2: {e}"), hyper_closed(&e)))?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(call).map_err(|e| fail(e.to_string()))?;
    let req = Request::post(format!("https://{node}/v1/{}", call.method()))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| fail(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unheard(format!("HTTP/2 request: {e}"), hyper_closed(&e)))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| fail(format!("reading the answer: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        fail(format!(
            "answered {status} with an invalid body ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })
}

/// A stream that notes whether its peer ever sent a byte.
struct Heard<T> {
    inner: T,
    heard: Arc<AtomicBool>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Heard<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Heard<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::PkiDir;
    use crate::proto::Reply;
    use hyper::body::Incoming;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

    /// A server with node3's identity on a loopback port: its first `resets` connections are
    /// reset before the handshake (a handshake the agent evicted); later ones are served, and
    /// each request is counted and answered with its connection's number, unless `close` is
    /// set: then the connection is closed once the request was read (after the server spoke).
    async fn server(dir: &std::path::Path, resets: usize, close: bool) -> (String, Arc<AtomicUsize>, TlsConnector) {
        let p = PkiDir::new(dir.join("pki"));
        p.init("dial", &["node1", "node3"], false).unwrap();
        let ca = p.load_ca().unwrap();
        let server = crate::tls::server_config(&ca, &p.load_identity("node3").unwrap()).unwrap();
        let client = crate::tls::client_config(&ca, &p.load_identity("node1").unwrap()).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&requests);
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(server);
            for i in 0.. {
                let (tcp, _) = l.accept().await.unwrap();
                if i < resets {
                    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                    continue;
                }
                let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
                tokio::spawn(async move {
                    let tls = acceptor.accept(tcp).await.unwrap();
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        seen.fetch_add(1, Ordering::SeqCst);
                        async move {
                            if close {
                                // Ends the connection under the request: no answer.
                                return Err(std::io::Error::other("closed"));
                            }
                            let reply = Reply {
                                ok: Some(serde_json::json!(i)),
                                err: None,
                            };
                            let body = Full::new(Bytes::from(serde_json::to_vec(&reply).unwrap()));
                            Ok(hyper::Response::new(body))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (addr, requests, TlsConnector::from(client))
    }

    fn ask() -> Call {
        Call::InstanceRunning {
            node: "node3".into(),
            instance: "inst1".into(),
        }
    }

    #[test]
    fn a_connection_the_agent_closed_before_it_spoke_is_dialed_again_and_no_other() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let secs = Duration::from_secs(5);
            // Two handshakes reset: the third try gets through, and the call ran once.
            let dir = tempfile::tempdir().unwrap();
            let (addr, requests, c) = server(dir.path(), 2, false).await;
            let r = call(&c, secs, "node3", &addr, &ask()).await.unwrap();
            assert_eq!(r.ok, Some(serde_json::json!(2)), "answered on the third connection");
            assert_eq!(requests.load(Ordering::SeqCst), 1);

            // More resets than tries: the error says how many were made.
            let dir = tempfile::tempdir().unwrap();
            let (addr, requests, c) = server(dir.path(), TRIES as usize, false).await;
            let e = call(&c, secs, "node3", &addr, &ask()).await.unwrap_err();
            let reset = e.contains("TLS handshake: ") || e.contains("connect: ");
            assert!(reset && e.contains(&format!("after {TRIES} tries")), "{e}");
            assert_eq!(requests.load(Ordering::SeqCst), 0);

            // The agent spoke (its HTTP/2 SETTINGS), read the request and closed: the call may
            // have run, and is not made again.
            let dir = tempfile::tempdir().unwrap();
            let (addr, requests, c) = server(dir.path(), 0, true).await;
            let e = call(&c, secs, "node3", &addr, &ask()).await.unwrap_err();
            assert!(e.contains("HTTP/2") && !e.contains("tries"), "{e}");
            assert_eq!(
                requests.load(Ordering::SeqCst),
                1,
                "a call that may have run was made again"
            );
        });
    }
}
