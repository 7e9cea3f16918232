//! Tells a plain HTTP/1 connection from one that may open with the HTTP/2 preface
//! (h2c prior knowledge), by peeking: nothing is consumed, so hyper reads the
//! request from the socket itself and its read buffer stays at its initial size
//! (replaying sniffed bytes made it double on every connection).

use tokio::net::TcpStream;

/// What a client sends first on an h2c prior-knowledge connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Not the HTTP/2 preface: HTTP/1.
    Http1,
    /// The preface, or a prefix of it so far: let the full detection decide.
    MaybeHttp2,
}

/// Classifies the bytes a client has sent so far (at least one).
pub fn classify(first: &[u8]) -> Opening {
    let n = first.len().min(PREFACE.len());
    if first[..n] == PREFACE[..n] { Opening::MaybeHttp2 } else { Opening::Http1 }
}

/// Waits for the client's first bytes and classifies them. `None`: the client closed
/// without sending anything.
pub async fn opening(stream: &TcpStream) -> std::io::Result<Option<Opening>> {
    let mut buf = [0u8; PREFACE.len()];
    let n = stream.peek(&mut buf).await?;
    Ok((n > 0).then(|| classify(&buf[..n])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_prefaces() {
        assert_eq!(classify(b"GET /rest/v1/t HTTP/1.1\r\n"), Opening::Http1);
        assert_eq!(classify(b"POST"), Opening::Http1);
        assert_eq!(classify(b"PUT"), Opening::Http1, "shares only the first letter");
        assert_eq!(classify(PREFACE), Opening::MaybeHttp2);
        assert_eq!(classify(b"PRI * HT"), Opening::MaybeHttp2, "a partial preface waits for the full check");
        assert_eq!(classify(b"P"), Opening::MaybeHttp2);
    }
}
