//! The chunked transfer coding (RFC 9112 §7.1), both ways, over plain buffers: the
//! decoder takes what it can from the front of the read buffer and says when it needs
//! more; trailers are read and dropped.

use std::fmt::Write;

use bytes::{Bytes, BytesMut};

/// The longest chunk-size line, or trailer section, accepted.
const MAX_LINE: usize = 16 * 1024;

/// A chunked body that is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body: {0}")]
pub struct Invalid(&'static str);

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decoder {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines, this many bytes of them seen.
    Trailers(usize),
    /// The body is over.
    Done,
}

/// What one step found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The buffer holds no whole next piece: read more.
    More,
    /// The body is over (and consumed from the buffer).
    End,
}

impl Decoder {
    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Takes the next piece of the body from the front of `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Invalid> {
        if let Some(step) = self.skip_framing(buf)? {
            return Ok(step);
        }
        let Decoder::Data(left) = *self else { unreachable!("skip_framing stops at data only") };
        let take = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let left = left - take as u64;
        *self = if left == 0 { Decoder::DataEnd } else { Decoder::Data(left) };
        Ok(Step::Data(buf.split_to(take).freeze()))
    }

    /// Consumes the framing (sizes, CRLFs, trailers) at the front of `buf` up to the
    /// next data, if it is there (`None`); otherwise says why not. Lets the reader learn
    /// that the last chunk it handed out was the last, when the terminator came with it.
    pub fn skip_framing(&mut self, buf: &mut BytesMut) -> Result<Option<Step>, Invalid> {
        loop {
            match *self {
                Decoder::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = buf.split_to(used);
                        *self = if size == 0 { Decoder::Trailers(0) } else { Decoder::Data(size) };
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_LINE => return Ok(Some(Step::More)),
                    _ => return Err(Invalid("chunk size")),
                },
                Decoder::Data(_) if buf.is_empty() => return Ok(Some(Step::More)),
                Decoder::Data(_) => return Ok(None),
                Decoder::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Some(Step::More));
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Invalid("chunk not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    *self = Decoder::Size;
                }
                Decoder::Trailers(seen) => {
                    let Some(at) = buf.windows(2).position(|w| w == b"\r\n") else {
                        let too_large = seen + buf.len() > MAX_LINE;
                        return if too_large { Err(Invalid("trailers too large")) } else { Ok(Some(Step::More)) };
                    };
                    if at > 0 && !is_field_line(&buf[..at]) {
                        return Err(Invalid("trailer line"));
                    }
                    let _ = buf.split_to(at + 2);
                    *self = if at == 0 { Decoder::Done } else { Decoder::Trailers(seen + at + 2) };
                }
                Decoder::Done => return Ok(Some(Step::End)),
            }
        }
    }
}

/// Whether a trailer line is a header field (`name: value`), as hyper requires.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else { return false };
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    colon > 0 && line[..colon].iter().all(token) && !line[colon..].iter().any(|b| *b == b'\r' || *b == b'\n' || *b == 0)
}

/// Appends `data` to `out` as one chunk.
pub fn encode(data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return; // an empty chunk would end the body
    }
    // Writing into a BytesMut cannot fail.
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body (no trailers).
pub const END: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `piece` bytes; returns the body.
    fn decode(wire: &[u8], piece: usize) -> Result<Vec<u8>, Invalid> {
        let (mut d, mut buf, mut body) = (Decoder::default(), BytesMut::new(), Vec::new());
        let mut rest = wire;
        loop {
            match d.step(&mut buf)? {
                Step::Data(b) => body.extend_from_slice(&b),
                Step::End => return Ok(body),
                Step::More if rest.is_empty() => return Err(Invalid("truncated (test)")),
                Step::More => {
                    let n = piece.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
            }
        }
    }

    #[test]
    fn round_trip_in_any_pieces() {
        let mut wire = BytesMut::new();
        for part in [&b"hello "[..], b"", b"chunked ", &[b'x'; 300]] {
            encode(part, &mut wire);
        }
        wire.extend_from_slice(END);
        let want = [&b"hello chunked "[..], &[b'x'; 300]].concat();
        for piece in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(decode(&wire, piece).unwrap(), want, "pieces of {piece}");
        }
    }

    #[test]
    fn extensions_and_trailers_are_read_past() {
        let wire = b"5;name=value\r\nhello\r\n0\r\nx-checksum: 1\r\nx-more: 2\r\n\r\n";
        assert_eq!(decode(wire, 3).unwrap(), b"hello");
        let mut buf = BytesMut::from(&b"0\r\n\r\nHTTP/1.1"[..]);
        let mut d = Decoder::default();
        assert_eq!(d.step(&mut buf), Ok(Step::End));
        assert!(d.is_done());
        assert_eq!(&buf[..], b"HTTP/1.1", "the next response is left alone");
        let mut buf = BytesMut::from(&b"2\r\nok\r\n0\r\n\r\n"[..]);
        let mut d = Decoder::default();
        assert_eq!(d.step(&mut buf), Ok(Step::Data(Bytes::from_static(b"ok"))));
        assert_eq!(d.skip_framing(&mut buf), Ok(Some(Step::End)), "the terminator came with the last chunk");
    }

    #[test]
    fn a_trailer_that_is_not_a_header_field_is_refused() {
        for wire in [&b"0\r\nhello\r\n\r\n"[..], b"0\r\n: x\r\n\r\n", b"0\r\nbad name: x\r\n\r\n"] {
            let mut buf = BytesMut::from(wire);
            assert_eq!(Decoder::default().step(&mut buf), Err(Invalid("trailer line")), "{wire:?}");
        }
    }

    #[test]
    fn broken_bodies_are_refused() {
        assert!(decode(b"zz\r\nhello\r\n0\r\n\r\n", 64).is_err());
        assert!(decode(b"5\r\nhelloXX0\r\n\r\n", 64).is_err());
        assert!(decode(b"ffffffffffffffffff\r\n", 64).is_err(), "size overflow");
        let endless = [b"0\r\n".as_slice(), &[b'a'; MAX_LINE + 10]].concat();
        assert_eq!(decode(&endless, 1024), Err(Invalid("trailers too large")));
    }
}
