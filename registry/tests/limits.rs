//! Oversized bodies against the real binary: the client that is still sending gets Consul's 413
//! text, never a connection reset, and the store is unchanged.

mod common;

use common::{Api, Server};

const LIMIT: usize = 512 * 1024;

#[tokio::test]
async fn oversized_values_get_413_not_a_reset() {
    let server = Server::start().await;
    let api = Api::new(server.url());
    for (i, size) in [LIMIT + 1, LIMIT + 4096, 2 * LIMIT, LIMIT + 1, 3 * LIMIT]
        .into_iter()
        .cycle()
        .take(20)
        .enumerate()
    {
        let resp = api
            .raw()
            .put(api.url(&format!("/v1/kv/big/{i}")))
            .body(vec![b'x'; size])
            .send()
            .await
            .unwrap_or_else(|err| panic!("attempt {i} ({size} bytes): no answer: {err}"));
        assert_eq!(resp.status().as_u16(), 413, "attempt {i} ({size} bytes)");
        assert_eq!(
            resp.text().await.expect("413 body"),
            format!("Request body({size} bytes) too large, max size: {LIMIT} bytes")
        );
    }
    let (entries, _) = api.get_with("big/", "recurse").await;
    assert!(entries.is_empty(), "an oversized value was stored");

    // The same connection pool keeps working, and exactly the limit is accepted.
    assert!(api.put("big/max", &vec![b'y'; LIMIT]).await);
    let (entry, _) = api.get("big/max").await;
    assert_eq!(entry.expect("stored").value.map(|v| v.len()), Some(LIMIT));
}

/// Reads one HTTP/1.1 answer (status, whether it says `Connection: close`) from `reader`.
async fn read_answer<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Option<(u16, bool)> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await.ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "connection" => close = value.to_ascii_lowercase().contains("close"),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    Some((status, close))
}

#[tokio::test]
async fn unread_bodies_never_cost_the_keep_alive_connection_an_answer() {
    use tokio::io::AsyncWriteExt as _;
    let server = Server::start_dev().await;
    let addr = server.url().trim_start_matches("http://").to_owned();
    // 404s and 405s that never read their bodies, between requests that do, all pipelined on
    // one connection and written in small pieces while the answers are read
    let body = vec![b'x'; 64 * 1024];
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..60 {
        let (method, path, status) = match i % 4 {
            0 => ("PUT", "/v1/nope", 404),
            1 => ("POST", "/v1/status/leader", 405),
            2 => ("PUT", "/v1/agent/check/pass/none", 404),
            _ => ("PUT", "/v1/kv/ok", 200),
        };
        wire.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        wire.extend_from_slice(&body);
        expected.push(status);
    }
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for piece in wire.chunks(1500) {
            if write.write_all(piece).await.is_err() {
                break;
            }
        }
        write
    });
    let mut reader = tokio::io::BufReader::new(read);
    for (i, status) in expected.iter().enumerate() {
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(10), read_answer(&mut reader))
                .await
                .expect("an answer in time");
        assert_eq!(answer, Some((*status, false)), "request {i}");
    }
    let _write = writer.await.unwrap();

    // past 256 KiB unread (Go's net/http limit) the answer says the connection ends
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let big = vec![b'x'; 300 * 1024];
    let writer = tokio::spawn(async move {
        let head = format!(
            "PUT /v1/nope HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            big.len()
        );
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&big).await;
        write
    });
    let mut reader = tokio::io::BufReader::new(read);
    assert_eq!(read_answer(&mut reader).await, Some((404, true)));
    let _ = writer.await;
}
