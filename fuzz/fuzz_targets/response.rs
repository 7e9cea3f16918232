//! Upstream responses on arbitrary bytes: the head parser and the chunked decoder,
//! fed in pieces as reads would, must refuse or accept, never panic or loop, and never
//! hand out more body than they were given.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard::upstream::chunked::{Decoder, Step};
use switchyard::upstream::wire::{Parsed, parse_head};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else { return };
    let piece = usize::from(piece % 32) + 1;
    for head_request in [false, true] {
        let mut buf = BytesMut::new();
        let mut rest = data;
        let mut decoder = Decoder::default();
        let mut in_body = false;
        let mut body = 0usize;
        loop {
            let step = if in_body {
                match decoder.step(&mut buf) {
                    Ok(Step::Data(d)) => {
                        body += d.len();
                        assert!(body <= data.len());
                        continue;
                    }
                    Ok(Step::End) | Err(_) => break,
                    Ok(Step::More) => true,
                }
            } else {
                match parse_head(&mut buf, head_request) {
                    Ok(Parsed::Head(_)) => {
                        in_body = true;
                        continue;
                    }
                    Ok(Parsed::Interim) => continue,
                    Ok(Parsed::Partial) => true,
                    Err(_) => break,
                }
            };
            if step {
                if rest.is_empty() {
                    break;
                }
                let n = piece.min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }
    }
});
