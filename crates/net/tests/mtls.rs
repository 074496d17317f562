//! Mutual TLS over QUIC on loopback: who gets in and who does not.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tessera_net::frame::{CHUNK, MAX_FRAME, read_frame, send_message, write_frame, write_message};
use tessera_net::pki::{Role, init, issue};
use tessera_net::quic::{ALPN, Credentials, client, connect, peer_name, server};
use tessera_secagg::SiteId;

fn federation(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-mtls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    init(&dir).unwrap();
    issue(&dir, "coordinator", Role::Coordinator).unwrap();
    issue(&dir, "site-a", Role::Site(SiteId(0))).unwrap();
    dir
}

/// Echoes one frame per connection, prefixed with the peer's certificate name.
async fn echo_server(dir: &std::path::Path, cert: &str) -> SocketAddr {
    let endpoint = server(
        ([127, 0, 0, 1], 0).into(),
        &Credentials::load(dir, cert).unwrap(),
        false,
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let name = peer_name(&conn).unwrap_or_default();
                let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                    return;
                };
                if let Ok(Some(frame)) = read_frame(&mut recv, MAX_FRAME).await {
                    let mut reply = name.into_bytes();
                    reply.push(b':');
                    reply.extend(frame);
                    let _ = write_frame(&mut send, &reply, MAX_FRAME).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                }
            });
        }
    });
    addr
}

async fn exchange(conn: quinn::Connection) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, b"hello", MAX_FRAME)
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut recv, MAX_FRAME))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    reply.ok_or_else(|| "no reply".to_string())
}

#[tokio::test]
async fn a_site_with_a_certificate_from_the_ca_gets_in_and_is_named() {
    let dir = federation("ok");
    let addr = echo_server(&dir, "coordinator").await;
    let endpoint = client(&Credentials::load(&dir, "site-a").unwrap(), false).unwrap();
    let conn = connect(&endpoint, addr, "coordinator").await.unwrap();
    assert_eq!(peer_name(&conn).as_deref(), Some("coordinator"));
    assert_eq!(exchange(conn).await.unwrap(), b"site-a:hello");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let dir = federation("nocert");
    let addr = echo_server(&dir, "coordinator").await;
    let creds = Credentials::load(&dir, "site-a").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(creds.ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let mut endpoint = quinn::Endpoint::client(([0, 0, 0, 0], 0).into()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap(),
    )));
    // In TLS 1.3 the client may finish its handshake before the server's rejection
    // arrives; either way no application data gets through.
    let outcome = match connect(&endpoint, addr, "coordinator").await {
        Err(e) => Err(e.to_string()),
        Ok(conn) => exchange(conn).await,
    };
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let dir = federation("ours");
    let other = federation("theirs");
    let addr = echo_server(&dir, "coordinator").await;
    // their site, trusting our CA so that only the server's check can stop it
    let mut creds = Credentials::load(&other, "site-a").unwrap();
    creds.ca = Credentials::load(&dir, "site-a").unwrap().ca;
    let endpoint = client(&creds, false).unwrap();
    let outcome = match connect(&endpoint, addr, "coordinator").await {
        Err(e) => Err(e.to_string()),
        Ok(conn) => exchange(conn).await,
    };
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test]
async fn a_server_that_is_not_the_coordinator_is_refused() {
    let dir = federation("impostor");
    // a site's certificate used to run a server
    let addr = echo_server(&dir, "site-a").await;
    let endpoint = client(&Credentials::load(&dir, "site-a").unwrap(), false).unwrap();
    let err = connect(&endpoint, addr, "coordinator").await.unwrap_err();
    assert!(err.to_string().contains("connecting to"), "{err}");
}

#[test]
fn missing_credentials_name_the_file() {
    let dir = federation("missing");
    let err = Credentials::load(&dir, "site-z").unwrap_err();
    assert!(err.to_string().contains("site-z.key"), "{err}");
}

/// `send_message` hands QUIC slices of the message instead of copies: the stream must
/// carry exactly the bytes `write_message` writes, for empty, one-piece, exactly-one-
/// chunk and many-piece messages.
#[tokio::test]
async fn send_message_puts_write_messages_bytes_on_the_wire() {
    let dir = federation("send-message");
    let endpoint = server(
        ([127, 0, 0, 1], 0).into(),
        &Credentials::load(&dir, "coordinator").unwrap(),
        false,
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let big: Vec<u8> = (0..2 * CHUNK + 3).map(|i| (i % 253) as u8).collect();
    let messages = vec![Vec::new(), b"one piece".to_vec(), vec![5; CHUNK], big];
    let mut expected = Vec::new();
    for m in &messages {
        write_message(&mut expected, m).await.unwrap();
    }
    let received = tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let (_send, mut recv) = conn.accept_bi().await.unwrap();
        recv.read_to_end(16 * CHUNK).await.unwrap()
    });
    let ep = client(&Credentials::load(&dir, "site-a").unwrap(), false).unwrap();
    let conn = connect(&ep, addr, "coordinator").await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    for m in messages {
        send_message(&mut send, m.into()).await.unwrap();
    }
    send.finish().unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), received)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the streams differ");
    let _ = std::fs::remove_dir_all(&dir);
}
