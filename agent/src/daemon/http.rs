//! The few HTTP requests the daemon makes to its own server on loopback (`/health`,
//! `/api/cluster`, `/admin/drain`, `/admin/resume`): HTTP/1.0, one request per connection,
//! the whole exchange under one timeout, answers read up to a cap. Not a general client.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest answer read (a health report or the cluster's member list).
const ANSWER_CAP: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not an HTTP answer")]
    Malformed,
}

/// An answer: its status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// `METHOD path` to `addr`, with the bearer `token` if given, all within `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    tokio::time::timeout(timeout, exchange(addr, method, path, token))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<Response, HttpError> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(ANSWER_CAP)
        .read_to_end(&mut answer)
        .await?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpError::Malformed)?;
    let status_line = std::str::from_utf8(&answer[..split])
        .ok()
        .and_then(|h| h.lines().next())
        .ok_or(HttpError::Malformed)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed)?;
    Ok(Response {
        status,
        body: answer[split + 4..].to_vec(),
    })
}
