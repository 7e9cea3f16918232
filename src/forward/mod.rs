//! What a request sent upstream looks like: the client's head turned into the one for
//! a backend (hop-by-hop and QA headers removed, credentials and names translated,
//! the forwarding headers set). Shared by the request path and shadow copies; pure
//! functions over request parts.

pub mod headers;

use crate::backend::BackendId;
use crate::error::Error;
use crate::identity::Token;
use crate::state::Snapshot;
use crate::translate::Applied;
pub use headers::{ClientAddr, Forwarded, Survey};

/// Turns a client request head into the head sent to backend `to`: addressed to it,
/// hop-by-hop and QA headers removed, credentials and names translated for it; and
/// the headers the proxy sets on it.
pub fn prepare(
    snap: &Snapshot,
    parts: &mut http::request::Parts,
    to: BackendId,
    token: Option<&Token>,
    peer: &ClientAddr,
    survey: Survey,
) -> Result<(Applied, Forwarded), Error> {
    let target = &snap.config.backends.get(to).url;
    let forwarded =
        headers::prepare_request(parts, target, peer, survey).map_err(|e| Error::bad_request(to, e.to_string()))?;
    if let Some(qa) = &snap.config.overrides.qa_header {
        // It carries a secret: never forwarded, valid or not.
        parts.headers.remove(qa);
    }
    let applied = snap.translator.request(parts, to, token).map_err(|e| Error::cross_schema_embed(to, &e))?;
    parts.uri = target.prefixed(std::mem::take(&mut parts.uri)).map_err(|e| Error::bad_request(to, e.to_string()))?;
    Ok((applied, forwarded))
}
