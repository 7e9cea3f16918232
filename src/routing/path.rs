//! Which request paths are routed at all. The service a request goes to, its policy
//! and its schema translation are all read from the raw path, so a path the upstream
//! would resolve to somewhere else (`/rest/v1/../auth/v1/user` is served as
//! `/auth/v1/user`, which is pinned to another project) must never be routed: such
//! paths are refused, in every spelling an upstream may decode (`%2e`, `%2E`, an
//! encoded `/` or `\` around them, a backslash as separator).

/// Whether `path` has a `.` or `..` segment, literally or once percent-decoded.
pub fn has_dot_segments(path: &str) -> bool {
    let bytes = path.as_bytes();
    // The common case, decided by one scan: no dot can make a dot segment without '.'
    // or '%' somewhere.
    if !bytes.iter().any(|b| matches!(b, b'.' | b'%')) {
        return false;
    }
    let mut segment: Vec<u8> = Vec::new();
    let mut i = 0;
    let dot = |s: &[u8]| s == b"." || s == b"..";
    while i <= bytes.len() {
        let (c, step) = match bytes.get(i) {
            None => (b'/', 1),
            Some(b'%') => match bytes.get(i + 1..i + 3).and_then(decode_hex) {
                Some(decoded) => (decoded, 3),
                None => (b'%', 1),
            },
            Some(&c) => (c, 1),
        };
        if c == b'/' || c == b'\\' {
            if dot(&segment) {
                return true;
            }
            segment.clear();
        } else {
            segment.push(c);
        }
        i += step;
    }
    false
}

fn decode_hex(pair: &[u8]) -> Option<u8> {
    let s = std::str::from_utf8(pair).ok()?;
    u8::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_in_every_spelling_are_found() {
        for path in [
            "/rest/v1/../auth/v1/user",
            "/rest/v1/./items",
            "/rest/v1/%2e%2e/auth/v1/user",
            "/rest/v1/%2E%2e/auth/v1/user",
            "/rest/v1/.%2e/auth/v1/user",
            "/rest/v1/..%2fauth/v1/user",
            "/rest/v1/%2e%2e%2Fauth%2fv1/user",
            "/rest/v1/..\\auth/v1/user",
            "/rest/v1/%2e%2e%5cauth/v1/user",
            "/rest/v1/..",
            "/..",
        ] {
            assert!(has_dot_segments(path), "{path}");
        }
    }

    #[test]
    fn ordinary_paths_with_dots_pass() {
        for path in [
            "/rest/v1/items",
            "/storage/v1/object/public/b/photo.v2.png",
            "/storage/v1/object/b/...hidden",
            "/functions/v1/a.b",
            "/rest/v1/rpc/fn%20name",
            "/rest/v1/%",
            "/rest/v1/%zz",
            "/",
        ] {
            assert!(!has_dot_segments(path), "{path}");
        }
    }
}
