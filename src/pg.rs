//! PostgreSQL connections, as every part that needs one makes them (the fleet's
//! store, `switchyard cohort count`, the handoff's sync): TLS as the URL's `sslmode`
//! says, verified against the webpki roots and the given CAs; errors that never
//! quote the connection settings.

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::secret::Secret;

/// TLS for a database connection (`prefer` by default: TLS when the server offers
/// it, verified).
pub fn tls(extra_roots: &[CertificateDer<'static>]) -> MakeRustlsConnect {
    MakeRustlsConnect::new(crate::upstream::tls_config(extra_roots))
}

/// `url` as a connection config named `application`, with a 5 s connect timeout.
pub fn config(url: &Secret, application: &str) -> Result<tokio_postgres::Config, String> {
    let mut pg: tokio_postgres::Config =
        url.expose().parse().map_err(|_| "not a PostgreSQL connection URL".to_string())?;
    pg.application_name(application).connect_timeout(Duration::from_secs(5));
    Ok(pg)
}

/// Connects and drives the connection in a task of its own (it ends with the client).
pub async fn connect(
    url: &Secret,
    application: &str,
    extra_roots: &[CertificateDer<'static>],
) -> Result<Client, String> {
    let tls = tls(extra_roots);
    let (client, connection) = config(url, application)?.connect(tls).await.map_err(|e| reason(&e))?;
    tokio::spawn(connection);
    Ok(client)
}

/// The reason a call failed, fit for logs and answers: the server's error, or the
/// client's (connection refused, TLS refused). tokio-postgres's errors never quote
/// the connection settings, so neither URL nor password appears.
pub fn reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None if e.is_closed() => "connection closed".into(),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}
