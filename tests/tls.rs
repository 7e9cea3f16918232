//! https upstreams through rustls: a TLS upstream on 127.0.0.1 with a certificate from
//! a private CA, trusted through `upstream.ca_file`; and refused (502, kind tls) when
//! the CA is not trusted.

mod support;

use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::process::write_config;
use support::*;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

/// An https echo upstream for `localhost`, and the PEM of the private CA that signed it.
async fn tls_upstream() -> (std::net::SocketAddr, String) {
    let (pem, cert, key) = localhost_certificate();
    let der_key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der_key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = service_fn(|req| async move {
                    let v = echo_body("v2-tls", req).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(full(v.to_string())))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    (addr, pem)
}

#[tokio::test]
async fn https_upstream_with_a_trusted_private_ca() {
    let (addr, pem) = tls_upstream().await;
    let ca = write_config("tls-ca", "").with_file_name("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let v1 = echo("v1").await;
    let url = format!("https://localhost:{}", addr.port());
    let extra = format!("[upstream]\nca_file = \"{}\"\n", ca.display());
    let sy = start(&config_text(&v1.url(), &url, 100, &extra)).await;
    for _ in 0..3 {
        let got = get_as(sy.addr, "/rest/v1/t?select=*", "tls-user").await;
        assert_eq!(got.status, 200, "{:?}", got.body);
        let seen = got.json();
        assert_eq!(seen["backend"], "v2-tls");
        assert_eq!(seen["headers"]["host"][0], format!("localhost:{}", addr.port()));
        assert_eq!(seen["query"], "select=*");
    }
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502() {
    let (addr, _pem) = tls_upstream().await;
    let v1 = echo("v1").await;
    let sy = start(&config_text(&v1.url(), &format!("https://localhost:{}", addr.port()), 100, "")).await;
    let got = get_as(sy.addr, "/rest/v1/t", "tls-user").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.json()["code"], "SWY502");
    let metrics = sy.proxy.metrics.render();
    assert!(metrics.contains(r#"switchyard_upstream_errors_total{backend="v2",kind="tls"} 1"#), "{metrics}");
}

#[test]
fn a_bad_ca_file_names_the_key() {
    let text =
        config_text("http://127.0.0.1:1", "http://127.0.0.1:2", 0, "[upstream]\nca_file = \"/nonexistent.pem\"\n");
    let err = switchyard::config::Config::parse(&text, &|_| None).unwrap_err();
    assert_eq!(err.key, "upstream.ca_file");
}
