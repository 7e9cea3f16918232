//! Client request heads on arbitrary bytes, fed in pieces as reads would: the plain
//! path's parser must take a request, wait for more, or hand the connection over,
//! never panic; a request it takes lies within the bytes it was given, and builds (or
//! is refused) without a panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard::server::plain::head::{MAX_WHOLE, Step, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else { return };
    let piece = usize::from(piece % 32) + 1;
    let mut buf = Vec::new();
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        match parse(&buf, 16, 4096) {
            // More is waited for only while the request could still be read whole.
            Step::Partial | Step::Body => assert!(buf.len() < MAX_WHOLE),
            Step::Handoff => return,
            Step::Ready(head) => {
                assert!(head.len + head.body <= buf.len());
                let bytes = Bytes::copy_from_slice(&buf[..head.len]);
                let _ = head.request(&bytes);
                return;
            }
        }
    }
});
