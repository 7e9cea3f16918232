//! Path, query and header rewriting on arbitrary request heads: the upstream head is
//! built (and encoded, with one `Host`) or the request refused, never a panic, and the
//! query survives byte for byte unless a translation had to change it.
#![no_main]

use http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use switchyard::backend::BackendId;
use switchyard::config::Config;
use switchyard::state::Snapshot;

const CONFIG: &str = r#"
[backends.v1]
url = "http://127.0.0.1:1/prefix"
anon_key = "anon-1"
[backends.v2]
url = "https://127.0.0.1:2"
anon_key = "anon-2"
[translation.tables]
profiles = "shared_services"
orders = "marketplace"
vendor_api_keys_v2 = "vendors.api_keys"
"smart_recall_*" = "intelligence"
[translation.rpc]
search = "security_service.find"
[translation.edge_functions.v2]
memory-create = "memory/create"
"#;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static SNAP: Snapshot = Snapshot::new(Config::parse(CONFIG, &|_| None).unwrap());
    }
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let target = lines.next().unwrap_or("/");
    let mut b = Request::builder().method(if data.first().is_some_and(|b| b % 2 == 0) { "GET" } else { "POST" }).uri(target);
    for line in lines.take(16) {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (HeaderName::try_from(k.trim()), HeaderValue::from_str(v.trim()))
        {
            b = b.header(k, v);
        }
    }
    let Ok(req) = b.body(()) else { return };
    let (parts, ()) = req.into_parts();
    let peer = switchyard::forward::ClientAddr::new("127.0.0.1".parse().unwrap());
    SNAP.with(|snap| {
        for to in BackendId::ALL {
            let mut p = parts.clone();
            let survey = switchyard::forward::headers::Survey::of(&p.headers);
            assert_eq!(survey.upgrade(), switchyard::forward::headers::is_upgrade(&p.headers));
            if let Ok((applied, forwarded)) = switchyard::forward::prepare(snap, &mut p, to, None, &peer, survey) {
                // The head on the wire: one request line, one `Host`, and its end.
                let head = switchyard::upstream::wire::encode_head(&p, &forwarded);
                let text = String::from_utf8_lossy(&head);
                assert!(text.ends_with("\r\n\r\n") && text.split("\r\n").next().is_some_and(|l| l.ends_with(" HTTP/1.1")));
                assert_eq!(text.matches("\r\nhost: ").count(), 1, "{text}");
                let changed_query = applied.kinds.iter().any(|k| matches!(k, switchyard::translate::Kind::Embed | switchyard::translate::Kind::RealtimeApiKey));
                if !changed_query {
                    assert_eq!(p.uri.query(), parts.uri.query());
                }
                let mut resp = http::HeaderMap::new();
                switchyard::forward::headers::prepare_response(&mut resp, false, to);
            }
        }
    });
});
