//! Tells a plain HTTP/1 connection from one that opens with the HTTP/2 preface
//! (h2c prior knowledge), by peeking: nothing is consumed, so the server reads the
//! request from the socket itself and hyper's read buffer stays at its initial size
//! (replaying sniffed bytes made it double on every connection).

use tokio::net::TcpStream;

/// What a client sends first on an h2c prior-knowledge connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Not the HTTP/2 preface: HTTP/1.
    Http1,
    /// The preface, or a prefix of it so far.
    MaybeHttp2,
    /// The whole preface.
    Http2,
}

/// Classifies the bytes a client has sent so far (at least one).
pub fn classify(first: &[u8]) -> Opening {
    let n = first.len().min(PREFACE.len());
    match first[..n] == PREFACE[..n] {
        false => Opening::Http1,
        true if n == PREFACE.len() => Opening::Http2,
        true => Opening::MaybeHttp2,
    }
}

/// Waits for the client's first bytes and classifies them: [`Opening::Http1`] or
/// [`Opening::Http2`]. `None`: the client closed before that was clear. The caller
/// bounds the wait.
pub async fn opening(stream: &TcpStream) -> std::io::Result<Option<Opening>> {
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        match classify(&buf[..n]) {
            _ if n == 0 => return Ok(None),
            Opening::MaybeHttp2 => {}
            decided => return Ok(Some(decided)),
        }
        // A preface split across packets (rare): peeking again at once would return
        // the same bytes, so wait for the rest.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_prefaces() {
        assert_eq!(classify(b"GET /rest/v1/t HTTP/1.1\r\n"), Opening::Http1);
        assert_eq!(classify(b"POST"), Opening::Http1);
        assert_eq!(classify(b"PUT"), Opening::Http1, "shares only the first letter");
        assert_eq!(classify(PREFACE), Opening::Http2);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"), Opening::Http2);
        assert_eq!(classify(b"PRI * HT"), Opening::MaybeHttp2, "a partial preface waits for the full check");
        assert_eq!(classify(b"P"), Opening::MaybeHttp2);
    }
}
