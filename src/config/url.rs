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

    /// The upstream URI for a request's path and query, which are kept byte for byte.
    pub fn join(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let pq = path_and_query.map_or("/", |pq| pq.as_str());
        let builder = Uri::builder().scheme(self.scheme.clone()).authority(self.authority.clone());
        if self.prefix.is_empty() {
            builder.path_and_query(pq).build()
        } else {
            builder.path_and_query(format!("{}{}", self.prefix, pq)).build()
        }
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
    fn parses_and_joins() {
        let b = BaseUrl::parse("https://abc.supabase.co/").unwrap();
        assert_eq!(b.to_string(), "https://abc.supabase.co");
        let pq: PathAndQuery = "/rest/v1/t?select=*&id=eq.1%20x".parse().unwrap();
        assert_eq!(b.join(Some(&pq)).unwrap().to_string(), "https://abc.supabase.co/rest/v1/t?select=*&id=eq.1%20x");
        let p = BaseUrl::parse("http://127.0.0.1:9/base").unwrap();
        assert_eq!(p.join(Some(&pq)).unwrap().path(), "/base/rest/v1/t");
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in ["", "abc", "ftp://x", "http://", "/path", "http://h/?q=1", "http://h h"] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
