//! A fault-injecting TCP proxy in front of a REAL PostgreSQL server (the `postgres` provider
//! is tested against the server itself, not a double; this only cuts connections).
//!
//! It follows the PostgreSQL Frontend/Backend Protocol, version 3.0, as published in the
//! PostgreSQL 15 documentation, chapter 55: "Message Flow" (55.2) and "Message Formats"
//! (55.7), <https://www.postgresql.org/docs/15/protocol.html>:
//! - the client's first message (StartupMessage, SSLRequest 80877103, GSSENCRequest
//!   80877104) has no type byte: an Int32 length counting itself, then the body; a server
//!   without TLS answers SSLRequest/GSSENCRequest with the single byte `N`, which the proxy
//!   does itself;
//! - every later message is a type byte and an Int32 length counting itself but not the
//!   type byte;
//! - a client request ends with Query (`Q`, simple protocol) or Sync (`S`, extended
//!   protocol: Parse/Bind/Describe/Execute/Close are held back until their Sync, so a
//!   request that is dropped is never seen by the server), and the server ends each answer
//!   with ReadyForQuery (`Z`). A Sync after nothing but Close (a client releasing a
//!   prepared statement) asks for no work and is not counted.
//!
//! The proxy counts requests (Q and S) over all connections. An armed fault fails the k-th
//! request in one of two ways: [`Fault::DropBefore`] closes the connection without sending
//! the request (the server does not perform it); [`Fault::DropAfter`] sends it, lets the
//! server finish it (up to its ReadyForQuery, i.e. committed), swallows the whole answer and
//! closes the connection (the crash-after-create case). The client sees a closed connection
//! either way, as when the operator's network or the server's pod fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;

/// How the k-th request fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Not sent to the server; the connection is closed.
    DropBefore,
    /// Performed by the server; the answer is swallowed and the connection closed.
    DropAfter,
}

#[derive(Default)]
struct State {
    requests: usize,
    connections: usize,
    armed: Option<(usize, Fault)>,
    fired: bool,
    /// Each request: connection number and the first bytes of its SQL (for diagnostics).
    log: Vec<String>,
}

/// The proxy; listens on 127.0.0.1:`port` until dropped.
pub struct PgProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl PgProxy {
    /// A proxy to the server at 127.0.0.1:`upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
        let st = state.clone();
        let accept = tokio::spawn(async move {
            let mut number = 0;
            while let Ok((client, _)) = listener.accept().await {
                st.lock().unwrap().connections += 1;
                number += 1;
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(client, upstream, st, number).await;
                });
            }
        });
        Self {
            port,
            state,
            accept,
        }
    }

    /// Requests (Q and S) seen since the last reset or arming.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// Connections accepted since the last reset.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// Zeroes the counters and disarms.
    pub fn reset(&self) {
        *self.state.lock().unwrap() = State::default();
    }

    /// Fails the `k`-th request (1-based) from now on.
    pub fn fail(&self, k: usize, fault: Fault) {
        assert!(k >= 1);
        let mut s = self.state.lock().unwrap();
        *s = State::default();
        s.armed = Some((k, fault));
    }

    /// The requests seen since the last reset or arming, one line each.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// Whether the armed fault has happened.
    pub fn fired(&self) -> bool {
        self.state.lock().unwrap().fired
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    number: usize,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();

    // Startup: untyped messages; refuse encryption ourselves, forward the StartupMessage.
    loop {
        let len = cr.read_i32().await?;
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        cr.read_exact(&mut body).await?;
        let code = i32::from_be_bytes(body[..4].try_into().unwrap());
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            cw.write_all(b"N").await?;
            continue;
        }
        sw.write_all(&len.to_be_bytes()).await?;
        sw.write_all(&body).await?;
        break;
    }

    let swallow = Arc::new(AtomicBool::new(false));
    let up = client_to_server(&mut cr, &mut sw, &state, &swallow, number);
    let down = server_to_client(&mut sr, &mut cw, &swallow);
    // Whichever direction ends (EOF, error, fault) ends the connection: both sockets drop.
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

async fn read_message(r: &mut OwnedReadHalf) -> std::io::Result<Vec<u8>> {
    let ty = r.read_u8().await?;
    let len = r.read_i32().await?;
    let mut msg = Vec::with_capacity(len as usize + 1);
    msg.push(ty);
    msg.extend_from_slice(&len.to_be_bytes());
    let mut body = vec![0u8; (len as usize).saturating_sub(4)];
    r.read_exact(&mut body).await?;
    msg.extend_from_slice(&body);
    Ok(msg)
}

async fn client_to_server(
    cr: &mut OwnedReadHalf,
    sw: &mut OwnedWriteHalf,
    state: &Mutex<State>,
    swallow: &AtomicBool,
    number: usize,
) -> std::io::Result<()> {
    let mut held: Vec<u8> = Vec::new();
    let mut sql = String::new();
    loop {
        let msg = read_message(cr).await?;
        match msg[0] {
            // Extended-protocol parts wait for their Sync.
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {
                if msg[0] == b'P' {
                    sql = sql_of(&msg[5..], true);
                }
                held.extend_from_slice(&msg)
            }
            // A Sync after nothing but Close (a client dropping a prepared statement)
            // asks for no work: forwarded, not counted.
            b'S' if only_close(&held) => {
                held.extend_from_slice(&msg);
                sw.write_all(&held).await?;
                held.clear();
            }
            b'Q' | b'S' => {
                held.extend_from_slice(&msg);
                if msg[0] == b'Q' {
                    sql = sql_of(&msg[5..], false);
                }
                let fault = {
                    let mut s = state.lock().unwrap();
                    s.requests += 1;
                    let line = format!("#{number} {} {}", msg[0] as char, sql);
                    s.log.push(line);
                    match s.armed {
                        Some((k, fault)) if k == s.requests && !s.fired => {
                            s.fired = true;
                            Some(fault)
                        }
                        _ => None,
                    }
                };
                match fault {
                    Some(Fault::DropBefore) => return Ok(()),
                    Some(Fault::DropAfter) => swallow.store(true, Ordering::SeqCst),
                    None => {}
                }
                sw.write_all(&held).await?;
                held.clear();
            }
            // Authentication, Terminate, copy data: straight through.
            _ => sw.write_all(&msg).await?,
        }
    }
}

/// Whether `held` (whole messages) holds only Close messages (at least one).
fn only_close(mut held: &[u8]) -> bool {
    if held.is_empty() {
        return false;
    }
    while !held.is_empty() {
        if held[0] != b'C' {
            return false;
        }
        let len = i32::from_be_bytes(held[1..5].try_into().unwrap()) as usize;
        held = &held[1 + len..];
    }
    true
}

/// The statement text of a Query (or Parse, after the statement name), shortened.
fn sql_of(body: &[u8], parse: bool) -> String {
    let mut parts = body.split(|b| *b == 0);
    if parse {
        parts.next();
    }
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    text.split_whitespace()
        .take(6)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn server_to_client(
    sr: &mut OwnedReadHalf,
    cw: &mut OwnedWriteHalf,
    swallow: &AtomicBool,
) -> std::io::Result<()> {
    loop {
        let msg = read_message(sr).await?;
        if swallow.load(Ordering::SeqCst) {
            if msg[0] == b'Z' {
                // The server has finished (and committed) the request: cut the client off.
                return Ok(());
            }
            continue;
        }
        cw.write_all(&msg).await?;
    }
}
