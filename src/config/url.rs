//! A backend's base URL, split once at load time so the request path only
//! concatenates.

use http::uri::{Authority, PathAndQuery, Scheme, Uri};

/// `scheme://authority[/prefix]` of a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and port; also the `Host` header sent upstream.
    pub authority: Authority,
    /// Path prefix without a trailing slash (usually empty).
    pub prefix: String,
    /// The `Host` header value for this upstream, built once.
    pub host: http::HeaderValue,
}

impl BaseUrl {
    /// Parses and checks a backend URL.
    pub fn parse(raw: &str) -> Result<BaseUrl, String> {
        let uri: Uri = raw.trim().parse().map_err(|e| format!("not a URL ({e}): {raw:?}"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| format!("missing http:// or https:// in {raw:?}"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!("scheme must be http or https in {raw:?}"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| format!("missing host in {raw:?}"))?;
        if authority.host().is_empty() {
            return Err(format!("missing host in {raw:?}"));
        }
        if uri.query().is_some() {
            return Err(format!("a backend URL takes no query string: {raw:?}"));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        let host = http::HeaderValue::from_str(authority.as_str()).map_err(|_| format!("bad host in {raw:?}"))?;
        Ok(BaseUrl { scheme, authority, prefix, host })
    }

    /// `uri` (origin form) under this backend's path prefix; unchanged without one.
    /// The path and query are kept byte for byte.
    pub fn prefixed(&self, uri: Uri) -> Result<Uri, http::Error> {
        if self.prefix.is_empty() {
            return Ok(uri);
        }
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        Ok(Uri::from(PathAndQuery::try_from(format!("{}{pq}", self.prefix))?))
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prefixes() {
        let b = BaseUrl::parse("https://abc.supabase.co/").unwrap();
        assert_eq!(b.to_string(), "https://abc.supabase.co");
        let uri: Uri = "/rest/v1/t?select=*&id=eq.1%20x".parse().unwrap();
        assert_eq!(b.prefixed(uri.clone()).unwrap(), uri);
        let p = BaseUrl::parse("http://127.0.0.1:9/base/").unwrap();
        assert_eq!(p.prefixed(uri).unwrap().to_string(), "/base/rest/v1/t?select=*&id=eq.1%20x");
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in ["", "abc", "ftp://x", "http://", "/path", "http://h/?q=1", "http://h h"] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
