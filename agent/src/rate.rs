//! The link-rate probe: how fast bytes cross a mutual-TLS link as one raw TLS stream per transfer
//! versus one HTTP/2 stream (hyper), with HTTP/2's flow-control windows at their defaults or
//! opened wide. It answers the data-plane question of the agent design (does one HTTP/2 stream
//! per disk reach the link rate, or does a disk need its own TLS connection?) and gives
//! `scripts/bench-net` its TLS link rate.
//!
//! The server counts what it receives and answers with the count; the client sends `bytes` bytes
//! of one reused incompressible buffer and reports wall time, its CPU time and the server's count
//! (a transfer that lost bytes is an error, not a rate).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::pki::PkiDir;
use crate::tls;

/// How the bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Raw TLS: the bytes are the TLS connection's payload.
    Tls,
    /// One HTTP/2 request body, hyper's default flow-control windows (64 KiB stream window).
    H2Default,
    /// One HTTP/2 request body, stream and connection windows of `WIDE_WINDOW`.
    H2Wide,
}

/// The window of `Mode::H2Wide`: enough for 1 Gbit/s at 100 ms round trip.
pub const WIDE_WINDOW: u32 = 16 << 20;
/// The size of each write.
const CHUNK: usize = 1 << 20;

/// One measured transfer.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// How the bytes travelled.
    pub mode: Mode,
    /// Bytes the server counted.
    pub bytes: u64,
    /// Wall seconds from the first byte written to the server's answer.
    pub seconds: f64,
    /// `bytes / seconds`.
    pub bytes_per_s: f64,
    /// The client's CPU seconds (user + system) during the transfer.
    pub client_cpu_seconds: f64,
}

/// Errors of the probe, as text naming the step.
pub type ProbeResult<T> = Result<T, String>;

fn cpu_seconds() -> f64 {
    // utime and stime are fields 14 and 15 of /proc/self/stat, after the parenthesised name.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<u64> = after.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    match (f.get(10), f.get(11)) {
        (Some(u), Some(s)) => (u + s) as f64 / ticks,
        _ => 0.0,
    }
}

/// Serves the probe as `node` on `listen` until killed: every connection must come from a node
/// of `allowed`; raw TLS connections and HTTP/2 connections are told apart by ALPN-free
/// sniffing of the HTTP/2 preface.
pub async fn serve(pki: &PkiDir, node: &str, listen: SocketAddr, allowed: Vec<String>) -> ProbeResult<()> {
    let (ca, id) = pki.load_checked(node).map_err(|e| e.to_string())?;
    let acceptor = TlsAcceptor::from(tls::server_config(&ca, &id).map_err(|e| e.to_string())?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    let allowed = Arc::new(allowed);
    loop {
        let (tcp, peer) = listener.accept().await.map_err(|e| format!("accept: {e}"))?;
        let acceptor = acceptor.clone();
        let allowed = Arc::clone(&allowed);
        tokio::spawn(async move {
            if let Err(e) = serve_one(acceptor, tcp, peer, &allowed).await {
                say!("net-rate: {peer}: {e}");
            }
        });
    }
}

async fn serve_one(acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr, allowed: &[String]) -> ProbeResult<()> {
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut s = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let names: Vec<&str> = allowed.iter().map(String::as_str).collect();
    tls::authorize(s.get_ref().1, &names, &peer.to_string()).map_err(|e| e.to_string())?;
    // The first bytes say which mode: an HTTP/2 preface, or the raw mode's 8-byte magic.
    let mut head = [0u8; 8];
    s.read_exact(&mut head).await.map_err(|e| format!("read: {e}"))?;
    if &head == b"RAWTLS01" {
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        loop {
            let got = s
                .read(&mut buf)
                .await
                .map_err(|e| format!("read after {n} bytes: {e}"))?;
            if got == 0 {
                break;
            }
            n += got as u64;
        }
        s.write_all(&n.to_be_bytes()).await.map_err(|e| e.to_string())?;
        s.shutdown().await.map_err(|e| e.to_string())?;
        return Ok(());
    }
    let io = TokioIo::new(Prefixed { head, pos: 0, inner: s });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(WIDE_WINDOW)
        .initial_connection_window_size(WIDE_WINDOW)
        .max_frame_size(1 << 20)
        .serve_connection(io, hyper::service::service_fn(count_body))
        .await
        .map_err(|e| format!("HTTP/2: {e}"))
}

async fn count_body(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let mut body = req.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map(|d| d.len() as u64).unwrap_or(0),
            Err(e) => return Ok(Response::builder().status(400).body(e.to_string()).expect("response")),
        }
    }
    Ok(Response::new(n.to_string()))
}

/// A stream whose first bytes were already read (the mode sniffing) and are given back first.
struct Prefixed<S> {
    head: [u8; 8],
    pos: usize,
    inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.head.len() {
            let n = (self.head.len() - self.pos).min(buf.remaining());
            let pos = self.pos;
            buf.put_slice(&self.head[pos..pos + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

write_through!(Prefixed);

/// A request body of `left` bytes, one shared buffer handed out again and again.
struct Repeat {
    chunk: Bytes,
    left: u64,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = (self.chunk.len() as u64).min(self.left) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

/// Incompressible bytes (xorshift64*), so a compressing link could not flatter the rate.
/// Sends `bytes` of `chunk` repeated as raw TLS on `s`; returns the count the server answered.
async fn raw_tls(mut s: tokio_rustls::client::TlsStream<TcpStream>, bytes: u64, chunk: Bytes) -> ProbeResult<u64> {
    s.write_all(b"RAWTLS01").await.map_err(|e| e.to_string())?;
    let mut left = bytes;
    while left > 0 {
        let n = (chunk.len() as u64).min(left) as usize;
        s.write_all(&chunk[..n]).await.map_err(|e| format!("write: {e}"))?;
        left -= n as u64;
    }
    s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await.map_err(|e| format!("read the count: {e}"))?;
    Ok(u64::from_be_bytes(n))
}

fn payload() -> Bytes {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut v = Vec::with_capacity(CHUNK);
    while v.len() < CHUNK {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    Bytes::from(v)
}

/// Sends `bytes` bytes as `node` to `peer` at `addr` in `mode` and measures it.
pub async fn send(
    pki: &PkiDir,
    node: &str,
    addr: SocketAddr,
    peer: &str,
    mode: Mode,
    bytes: u64,
    streams: usize,
) -> ProbeResult<Measured> {
    if streams == 0 || (streams > 1 && mode != Mode::Tls) {
        return Err(format!("{streams} streams: 1 with HTTP/2, 1 or more with raw TLS"));
    }
    let (ca, id) = pki.load_checked(node).map_err(|e| e.to_string())?;
    let connector = TlsConnector::from(tls::client_config(&ca, &id).map_err(|e| e.to_string())?);
    let name = rustls::pki_types::ServerName::try_from(peer.to_string()).map_err(|e| e.to_string())?;
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let s = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake with {peer}: {e}"))?;
        conns.push(s);
    }
    let chunk = payload();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let counted = match mode {
        Mode::Tls => {
            // The bytes split between the streams, which run side by side.
            let each = bytes / streams as u64;
            let tasks: Vec<_> = conns
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let n = if i == 0 {
                        bytes - each * (streams as u64 - 1)
                    } else {
                        each
                    };
                    tokio::spawn(raw_tls(s, n, chunk.clone()))
                })
                .collect();
            let mut counted = 0;
            for t in tasks {
                counted += t.await.map_err(|e| e.to_string())??;
            }
            counted
        }
        Mode::H2Default | Mode::H2Wide => {
            let s = conns.remove(0);
            let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
            if mode == Mode::H2Wide {
                b.initial_stream_window_size(WIDE_WINDOW)
                    .initial_connection_window_size(WIDE_WINDOW)
                    .max_frame_size(1 << 20);
            }
            let (mut sender, conn) = b.handshake(TokioIo::new(s)).await.map_err(|e| format!("HTTP/2: {e}"))?;
            tokio::spawn(conn);
            let req = Request::post(format!("https://{peer}/probe"))
                .body(Repeat { chunk, left: bytes })
                .map_err(|e| e.to_string())?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("HTTP/2 request: {e}"))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            let text = String::from_utf8_lossy(&body).to_string();
            if !status.is_success() {
                return Err(format!("server answered {status}: {text}"));
            }
            text.parse().map_err(|_| format!("server answered {text:?}"))?
        }
    };
    let seconds = t0.elapsed().as_secs_f64();
    if counted != bytes {
        return Err(format!("sent {bytes} bytes, the server counted {counted}"));
    }
    Ok(Measured {
        mode,
        bytes,
        seconds,
        bytes_per_s: bytes as f64 / seconds,
        client_cpu_seconds: cpu_seconds() - cpu0,
    })
}
