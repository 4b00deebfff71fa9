//! One call of the master to an agent on a connection of its own: TCP connect, mutual TLS,
//! HTTP/2, the request and its answer; and the re-dial of a connection that the agent closed
//! before it spoke.
//!
//! The agent evicts a handshake in progress to make room for newer ones (`server/admit.rs`).
//! A master behind the same address as a flood (NAT) can be evicted that way before its first
//! byte reaches the agent (a loaded master is slow to send its ClientHello), and it only gets
//! in by trying again. A call is therefore sent only once the agent has spoken on the
//! connection: its HTTP/2 server sends its SETTINGS as soon as its TLS handshake is done,
//! before it reads anything. A connection that is closed or reset before that (not one that
//! times out, is refused or gets a TLS alert) is dialed again, the call never having been
//! sent; once a call was sent it is never sent again. At most [`TRIES`] tries, and all of them
//! (each one's TCP connect, TLS handshake and wait for the agent's first word) within the
//! connect timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::client::{KEEPALIVE, MAX_ANSWER};
use crate::proto::{Call, Reply};

/// Tries of one call whose connections the agent closed before it spoke.
pub const TRIES: u32 = 4;

/// The pause before dialing again.
const PAUSE: Duration = Duration::from_millis(50);

/// Why a connection could not be opened, and whether another may be tried.
struct Failed {
    msg: String,
    /// Closed or reset before the agent spoke (the call was not sent).
    again: bool,
}

impl Failed {
    fn end(msg: String) -> Self {
        Self { msg, again: false }
    }
}

/// Why a call failed, and whether the call had been sent (if not, the agent never ran it).
#[derive(Debug)]
pub(super) struct CallFailed {
    pub msg: String,
    pub sent: bool,
}

/// Calls `node`'s agent at `addr` with `call`; `connect` bounds the opening of the
/// connection, all tries together.
pub(super) async fn call(
    connector: &TlsConnector,
    connect: Duration,
    node: &str,
    addr: &str,
    call: &Call,
    config: &str,
) -> Result<Reply, CallFailed> {
    let unsent = |msg| CallFailed { msg, sent: false };
    let until = Instant::now() + connect;
    let mut tries = 0;
    let sender = loop {
        tries += 1;
        match open(connector, until, connect, node, addr).await {
            Ok(s) => break s,
            Err(f) if f.again && tries < TRIES && Instant::now() + PAUSE < until => {
                tracing::debug!(node, tries, error = %f.msg, "the agent closed the connection before it spoke: dialing again");
                tokio::time::sleep(PAUSE).await;
            }
            Err(f) if tries > 1 => return Err(unsent(format!("{} (after {tries} tries)", f.msg))),
            Err(f) => return Err(unsent(f.msg)),
        }
    };
    request(sender, node, call, config)
        .await
        .map_err(|msg| CallFailed { msg, sent: true })
}

/// Whether `e` is a close or reset by the peer.
fn closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
    )
}

/// Whether a hyper error is the connection's close or reset.
fn hyper_closed(e: &hyper::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return closed(io);
        }
        src = s.source();
    }
    e.is_closed()
}

/// A connection to the agent on which it spoke, by `until` (`connect`: the timeout named in
/// errors).
async fn open(
    connector: &TlsConnector,
    until: Instant,
    connect: Duration,
    node: &str,
    addr: &str,
) -> Result<SendRequest<Full<Bytes>>, Failed> {
    let secs = connect.as_secs();
    let tcp = tokio::time::timeout_at(until, TcpStream::connect(addr))
        .await
        .map_err(|_| Failed::end(format!("connect timed out after {secs} s")))?
        // Reset (not refused): the port took the connection and dropped it at once.
        .map_err(|e| Failed {
            again: closed(&e),
            msg: format!("connect: {e}"),
        })?;
    let _ = tcp.set_nodelay(true);
    let _ = crate::sock::keepalive(&tcp);
    let name = rustls::pki_types::ServerName::try_from(node.to_string()).map_err(|e| Failed::end(e.to_string()))?;
    let tls = tokio::time::timeout_at(until, connector.connect(name, tcp))
        .await
        .map_err(|_| Failed::end("TLS handshake timed out".to_string()))?
        .map_err(|e| Failed {
            again: closed(&e),
            msg: format!("TLS handshake: {e}"),
        })?;
    let spoke = Arc::new(Notify::new());
    let io = Heard {
        inner: tls,
        heard: false,
        spoke: Arc::clone(&spoke),
    };
    // HTTP/2 pings keep a long call (a disk transfer) honest: an agent that stops answering
    // (its node is down, the link is cut) fails the call instead of hanging the export.
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failed {
            again: hyper_closed(&e),
            msg: format!("HTTP/2: {e}"),
        })?;
    let mut conn = tokio::spawn(conn);
    tokio::select! {
        () = spoke.notified() => Ok(sender),
        r = &mut conn => Err(match r {
            Ok(Err(e)) => Failed {
                again: hyper_closed(&e),
                msg: format!("HTTP/2: {e}"),
            },
            _ => Failed {
                again: true,
                msg: "HTTP/2: the agent closed the connection before it spoke".to_string(),
            },
        }),
        () = tokio::time::sleep_until(until) => {
            conn.abort();
            Err(Failed::end(format!("the agent did not speak within {secs} s of the connect")))
        }
    }
}

/// Sends `call` on a connection on which the agent spoke, and reads its answer.
async fn request(mut sender: SendRequest<Full<Bytes>>, node: &str, call: &Call, config: &str) -> Result<Reply, String> {
    let body = serde_json::to_vec(call).map_err(|e| e.to_string())?;
    let req = Request::post(format!("https://{node}/v1/{}", call.method()))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(crate::proto::CONFIG_HEADER, config)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP/2 request: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        format!(
            "answered {status} with an invalid body ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })
}

/// A stream that tells `spoke` (once) when its peer sent its first byte.
struct Heard<T> {
    inner: T,
    heard: bool,
    spoke: Arc<Notify>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Heard<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && !self.heard {
            self.heard = true;
            // A permit: the waiter may come later.
            self.spoke.notify_one();
        }
        r
    }
}

write_through!(Heard);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::PkiDir;
    use hyper::body::Incoming;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// What the test agent does with its `i`-th connection.
    #[derive(Clone, Copy, PartialEq)]
    enum Act {
        /// Reset before the TLS handshake (a handshake the agent evicted).
        Reset,
        /// Complete the TLS handshake, then close without a word.
        Silent,
        /// Serve HTTP/2: answer each request with the connection's number.
        Serve,
        /// Serve HTTP/2, but close the connection under each request once it was read.
        CloseUnder,
    }

    /// A server with node3's identity on a loopback port that does `acts[i]` with its `i`-th
    /// connection (the last act for those after); counts the requests it read.
    async fn server(dir: &std::path::Path, acts: &'static [Act]) -> (String, Arc<AtomicUsize>, TlsConnector) {
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
                let act = acts[i.min(acts.len() - 1)];
                if act == Act::Reset {
                    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                    continue;
                }
                let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
                tokio::spawn(async move {
                    let tls = acceptor.accept(tcp).await.unwrap();
                    if act == Act::Silent {
                        return;
                    }
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        seen.fetch_add(1, Ordering::SeqCst);
                        async move {
                            if act == Act::CloseUnder {
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

    async fn ask(acts: &'static [Act]) -> (Result<Reply, super::CallFailed>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let (addr, requests, c) = server(dir.path(), acts).await;
        let call = Call::InstanceRunning {
            node: "node3".into(),
            instance: "inst1".into(),
        };
        let r = super::call(&c, Duration::from_secs(5), "node3", &addr, &call, "").await;
        (r, requests.load(Ordering::SeqCst))
    }

    #[test]
    fn a_connection_the_agent_closed_before_it_spoke_is_dialed_again_and_no_other() {
        use Act::*;
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            // Reset before the handshake, then closed after it without a word: the third try
            // gets through, and the call was sent once.
            let (r, requests) = ask(&[Reset, Silent, Serve]).await;
            assert_eq!(
                r.unwrap().ok,
                Some(serde_json::json!(2)),
                "answered on the third connection"
            );
            assert_eq!(requests, 1);

            // More such closes than tries: the error says how many were made, and that the
            // call was not sent.
            let (r, requests) = ask(&[Reset, Silent, Reset, Silent, Serve]).await;
            let Err(e) = r else { panic!("answered") };
            assert!(e.msg.contains(&format!("after {TRIES} tries")) && !e.sent, "{}", e.msg);
            assert_eq!(requests, 0);

            // The agent spoke (its HTTP/2 SETTINGS), read the request and closed: the call may
            // have run, and is not sent again.
            let (r, requests) = ask(&[CloseUnder, Serve]).await;
            let Err(e) = r else { panic!("answered") };
            assert!(
                e.msg.contains("HTTP/2 request") && !e.msg.contains("tries") && e.sent,
                "{}",
                e.msg
            );
            assert_eq!(requests, 1, "a call that may have run was sent again");
        });
    }
}
