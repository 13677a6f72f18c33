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
