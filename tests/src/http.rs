//! A small HTTP/1.1 client for tests: one request per connection (`Connection: close`), the
//! status and the whole body (de-chunked); not a general client: no TLS, no redirects, no
//! keep-alive, and it panics on a broken connection, which fails the test that made it
//! (`try_call` answers an error instead, for callers that watch nodes go away).

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The operator's admin token the tests' ETL servers are configured with (`admin_token`):
/// `call` and `call_raw` present it; `call_with_headers` and `try_call` send only the headers
/// they are given.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// One request with the test admin token; the status and the body (JSON when it parses, else
/// a string).
pub async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = call_raw(addr, method, path, body.as_bytes()).await;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// One request with any body bytes and the test admin token; the status and the body as text.
pub async fn call_raw(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    call_with_headers(addr, method, path, &[("Authorization", &auth)], body).await
}

/// One request with extra headers (`("Authorization", "Bearer …")`); the status and the body
/// as text.
pub async fn call_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    try_call(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// As [`call_with_headers`], but a connection that fails or an answer without a status is an
/// error rather than a panic (for callers that watch nodes come and go); no timeout of its
/// own: the caller bounds it.
pub async fn try_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {head:?}")))?;
    // Bodies come chunked or with a length; the tests only need the payload.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n.min(rest.len())]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_joined_up_to_the_last_one() {
        assert_eq!(
            dechunk("5\r\nhello\r\nb\r\n, chunked!\n\r\n0\r\n\r\n"),
            "hello, chunked!\n"
        );
        assert_eq!(dechunk("0\r\n\r\n"), "");
    }

    #[tokio::test]
    async fn a_call_reads_status_and_json_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let (mut request, mut buf) = (Vec::new(), [0u8; 1024]);
            while !request.ends_with(b"\r\n\r\n{}") {
                let n = conn.read(&mut buf).await.expect("read");
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(
                b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n",
            )
            .await
            .expect("write");
            String::from_utf8_lossy(&request).into_owned()
        });
        let (status, body) = call(addr, "POST", "/x", "{}").await;
        assert_eq!((status, body), (201, serde_json::json!({"a": 1})));
        let request = server.await.expect("server");
        assert!(request.starts_with("POST /x HTTP/1.1\r\n"), "{request}");
    }
}
