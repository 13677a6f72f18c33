//! Request bodies: size limits with Consul's 413 text, and Consul-compatible JSON decoding.

use axum::body::Body;
use axum::http::header;
use bytes::Bytes;
use futures::StreamExt as _;

use super::ApiError;

/// Largest KV value and txn body, as Consul (512 KiB).
pub(crate) const MAX_VALUE_SIZE: usize = 512 * 1024;
/// Largest JSON body of other requests.
pub(crate) const MAX_JSON_BODY: usize = 1024 * 1024;
/// How much of a too-large body is read and dropped before the 413 is sent.
const MAX_DRAIN: usize = 1024 * 1024;

/// Reads a body of at most `limit` bytes; larger ones get Consul's 413 text, a body that cannot
/// be read (broken chunked encoding, a connection cut mid-body) a 400.
pub(crate) async fn read_body(
    headers: &axum::http::HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = |n: String| {
        ApiError::TooLarge(format!(
            "Request body({n} bytes) too large, max size: {limit} bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut chunks = body.into_data_stream();
    let mut read = Vec::new();
    let mut total = 0usize;
    // Past the limit the rest is read and dropped (up to MAX_DRAIN) before answering, so a
    // client still sending its body reads the 413 instead of a connection reset, as with Go's
    // net/http.
    let mut cut_short = false;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk
            .map_err(|err| ApiError::BadRequest(format!("Failed to read request body: {err}")))?;
        total = total.saturating_add(chunk.len());
        if total > limit.saturating_add(MAX_DRAIN) {
            cut_short = true;
            break;
        }
        if total <= limit && declared.is_none_or(|n| n <= limit) {
            read.extend_from_slice(&chunk);
        }
    }
    match declared {
        Some(n) if n > limit => Err(too_large(n.to_string())),
        // A body without Content-Length is only counted up to the drain limit.
        _ if cut_short => Err(too_large(format!("at least {total}"))),
        _ if total > limit => Err(too_large(total.to_string())),
        _ => Ok(Bytes::from(read)),
    }
}

/// Reads and decodes a JSON request body the way Consul does (see [`crate::http::decode::decode_request`]).
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<Option<T>, ApiError> {
    let bytes = read_body(headers, body, MAX_JSON_BODY).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    crate::http::decode::decode_request(&bytes)
        .map(Some)
        .map_err(ApiError::BadRequest)
}

/// How much of a body its handler left unread is read after the answer, as Go's net/http
/// (`maxPostHandlerReadBytes`), so the connection can serve the next request.
const MAX_UNREAD: usize = 256 * 1024;
/// How long that read may take.
const UNREAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps a keep-alive connection answering after a handler that did not read its request's
/// body (a 404 or a 405, a refused token): the rest of the body is read before the answer
/// leaves, up to [`MAX_UNREAD`]; past that, or if it does not arrive in time, the answer says
/// `Connection: close` so the client knows the connection ends with it. Without this the
/// server drops such a connection after the answer, and a client that has already sent its
/// next request on it gets no answer.
pub(crate) async fn drain_unread(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use std::sync::{Arc, Mutex};
    let (parts, body) = request.into_parts();
    let slot = Arc::new(Mutex::new(Some(body.into_data_stream())));
    let shared = slot.clone();
    let stream = futures::stream::poll_fn(move |cx| {
        let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(stream) => stream.poll_next_unpin(cx),
            None => std::task::Poll::Ready(None),
        }
    });
    let request = axum::extract::Request::from_parts(parts, Body::from_stream(stream));
    let mut response = next.run(request).await;
    let rest = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut rest) = rest {
        let drained = tokio::time::timeout(UNREAD_WAIT, async {
            let mut total = 0usize;
            while let Some(chunk) = rest.next().await {
                match chunk {
                    Ok(chunk) => total = total.saturating_add(chunk.len()),
                    Err(_) => return false,
                }
                if total > MAX_UNREAD {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false);
        if !drained {
            response.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
    }
    response
}
