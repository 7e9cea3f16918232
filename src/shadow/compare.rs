//! Whether a shadow answer matches the primary one: same status, and the same JSON
//! with key order and configured fields (timestamps…) ignored; bytes otherwise.

use serde_json::Value;

fn strip(v: &mut Value, ignore: &[String]) {
    match v {
        Value::Object(map) => {
            map.retain(|k, _| !ignore.iter().any(|i| i == k));
            map.values_mut().for_each(|x| strip(x, ignore));
        }
        Value::Array(items) => items.iter_mut().for_each(|x| strip(x, ignore)),
        _ => {}
    }
}

/// Compares two answers.
pub fn same(a: (u16, &[u8]), b: (u16, &[u8]), ignore: &[String]) -> bool {
    if a.0 != b.0 {
        return false;
    }
    match (serde_json::from_slice::<Value>(a.1), serde_json::from_slice::<Value>(b.1)) {
        (Ok(mut x), Ok(mut y)) => {
            strip(&mut x, ignore);
            strip(&mut y, ignore);
            x == y
        }
        _ => a.1 == b.1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_and_ignored_fields_do_not_matter() {
        let ignore = vec!["updated_at".to_string()];
        let a = br#"[{"id":1,"name":"x","updated_at":"2026-01-01","tags":{"a":1,"b":2}}]"#;
        let b = br#"[{"tags":{"b":2,"a":1},"updated_at":"2026-11-24","name":"x","id":1}]"#;
        assert!(same((200, a), (200, b), &ignore));
        assert!(!same((200, a), (200, b), &[]), "the timestamp differs when not ignored");
        assert!(!same((200, a), (404, a), &ignore));
        assert!(!same((200, br#"[{"id":1}]"#), (200, br#"[{"id":2}]"#), &ignore));
        assert!(same((200, b"plain"), (200, b"plain"), &ignore));
        assert!(!same((200, b"plain"), (200, b"other"), &ignore));
        assert!(!same((200, br#"[1,2]"#), (200, br#"[2,1]"#), &ignore), "array order matters");
    }
}
