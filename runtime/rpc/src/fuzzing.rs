//! Entry points for fuzzing the parsers of untrusted input: the envelope reader, the error
//! JSON and end-stream parsers, the GET query parser, the timeout header, gzip under its size
//! limit, `-bin` metadata, the credentials `Auth` reads, and the content type and encoding
//! headers. Used by the cargo-fuzz targets in `fuzz/` and by the smoke test below; not a
//! public API.

use bytes::Bytes;
use http::HeaderValue;

use crate::protocol::{envelope, error_json, get, timeout};

/// Reads every envelope of `data` (split into two chunks at `data[0]`) with a 1 KiB limit.
pub fn envelope_reader(data: &[u8]) {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let chunks = vec![
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::copy_from_slice(
            &data[..split],
        ))),
        Ok(http_body::Frame::data(Bytes::copy_from_slice(
            &data[split..],
        ))),
    ];
    let body = http_body_util::StreamBody::new(Chunks(chunks.into_iter()));
    let mut reader = envelope::EnvelopeReader::new(body, 1024);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    // The body is always ready, so polling never returns Pending; bound the loop anyway.
    for _ in 0..data.len() + 2 {
        match reader.poll_frame(&mut cx) {
            std::task::Poll::Ready(Ok(Some(_))) => {}
            _ => break,
        }
    }
}

struct Chunks<I>(I);
impl<I> Unpin for Chunks<I> {}
impl<I: Iterator> futures_core::Stream for Chunks<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// Parses `data` as a unary error body and as an end-stream message.
pub fn error_json(data: &[u8]) {
    let _ = error_json::decode_error(data, crate::Code::Unknown);
    let _ = error_json::decode_end_stream(data);
}

/// Parses `data` as a GET query string.
pub fn get_query(data: &[u8]) {
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = get::parse_query(query);
    }
}

/// Parses `data` as a `Connect-Timeout-Ms` header value.
pub fn timeout_header(data: &[u8]) {
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let _ = timeout::parse(&value);
    }
}

/// Decompresses `data` as gzip under a 1 KiB limit (a bomb must stop at the limit).
pub fn gzip_limit(data: &[u8]) {
    if let Ok(out) = crate::protocol::compression::Compression::Gzip.decompress(data, 1024) {
        assert!(out.len() <= 1024, "gzip output past its limit");
    }
}

/// Reads `data` as the value of a `-bin` metadata entry.
pub fn binary_metadata(data: &[u8]) {
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut map = http::HeaderMap::new();
        map.append("x-data-bin", value.clone());
        map.append("x-data-bin", value);
        let _ = crate::metadata::get_binary(&map, "x-data-bin");
        let _ = crate::metadata::get_all_binary(&map, "x-data-bin").count();
    }
}

/// Authenticates a call whose `Authorization` and `X-Api-Key` headers are `data`, split at
/// its first byte.
pub fn credentials(data: &[u8]) {
    use crate::server::intercept::{CallContext, ServerInterceptor as _};
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut headers = http::HeaderMap::new();
    for (name, part) in [
        ("authorization", &data[..split]),
        ("x-api-key", &data[split..]),
    ] {
        if let Ok(value) = HeaderValue::from_bytes(part) {
            headers.append(name, value);
        }
    }
    static METHOD: crate::MethodDescriptor = crate::MethodDescriptor {
        service: "f.F",
        method: "M",
        path: "/f.F/M",
        kind: crate::StreamKind::Unary,
        idempotency: crate::Idempotency::Unknown,
    };
    let auth = crate::policy::Auth::new()
        .bearer(|token| (token == "t").then(|| "p".to_owned()))
        .api_key("x-api-key", |key| (key == "k").then(|| "q".to_owned()));
    let mut peer = crate::request::Peer::default();
    let mut call = CallContext {
        method: Some(&METHOD),
        procedure: METHOD.path,
        headers: &headers,
        peer: &mut peer,
        deadline: None,
    };
    let _ = auth.before(&mut call);
}

/// Reads `data` as content types and encoding lists (`Content-Type`, `Accept-Encoding`,
/// `Content-Encoding`).
pub fn content_headers(data: &[u8]) {
    use crate::protocol::Codec;
    use crate::protocol::compression::Compression;
    let _ = Codec::from_unary_content_type(data);
    let _ = Codec::from_stream_content_type(data);
    let _ = Compression::negotiate(data);
    let _ = Compression::parse(data);
}

#[cfg(test)]
mod tests {
    /// A short, deterministic fuzzing run in the ordinary test suite: random inputs and
    /// mutations of valid ones through every parser; any panic fails the test. The real
    /// fuzzing runs with cargo-fuzz (see `fuzz/README.md`).
    #[test]
    fn smoke_no_parser_panics_on_random_or_mutated_input() {
        let seeds: [&[u8]; 9] = [
            // 4 KiB of zeros, gzipped: past the 1 KiB limit.
            b"\x1f\x8b\x08\x00\xb3\x6c\x10\x6b\x02\xff\xed\xc1\x01\x0d\x00\x00\x00\xc2\xa0\xf7\x4f\x6d\x0f\x07\x14\x00\x00\x00\xf0\x6e\x11\x00\x1c\xc7\x00\x10\x00\x00",
            b"\x08Bearer tk",
            b"application/connect+proto; charset=utf-8, gzip;q=0.5, br",
            b"\x00\x00\x00\x00\x05hello\x02\x00\x00\x00\x02{}",
            br#"{"code":"not_found","message":"x","details":[{"type":"a.B","value":"AQ=="}]}"#,
            br#"{"error":{"code":"internal"},"metadata":{"k":["v"],"x-bin":["AQ"]}}"#,
            b"connect=v1&base64=1&compression=gzip&encoding=proto&message=AQI",
            b"encoding=json&message=%7B%22k%22%3A1%7D",
            b"1234567890",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut input: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 64) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                seeds[(next() % seeds.len() as u64) as usize].to_vec()
            };
            for _ in 0..(next() % 4) {
                if input.is_empty() {
                    break;
                }
                let at = (next() % input.len() as u64) as usize;
                match next() % 3 {
                    0 => input[at] = next() as u8,
                    1 => {
                        input.remove(at);
                    }
                    _ => input.insert(at, next() as u8),
                }
            }
            super::envelope_reader(&input);
            super::error_json(&input);
            super::get_query(&input);
            super::timeout_header(&input);
            super::gzip_limit(&input);
            super::binary_metadata(&input);
            super::credentials(&input);
            super::content_headers(&input);
        }
    }
}
