//! Config parsing on arbitrary text: accepted or refused with a keyed error, never a
//! panic; an accepted config must build a routing snapshot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, &|_| None) {
        Ok(config) => {
            let _ = switchyard::state::Snapshot::new(config);
        }
        Err(e) => assert!(!e.key.is_empty()),
    }
});
