//! The native TLS client (`tls::TlsStream`, rustls's unbuffered connection) and server (`tls::TlsServerStream`)
//! across TLS 1.3 key updates.
//!
//! A parent may refresh its traffic keys at any moment (rustls does it by itself after a number of records; another
//! implementation may do it per piece). The KeyUpdate message arrives between two application-data records of a
//! piece, asks the client to update its own sending keys too, and every record after it is under the new keys. The
//! client must keep decrypting the piece, answer with its own KeyUpdate, and encrypt its next request under the new
//! keys. A child may refresh its keys between two requests, and the parent must answer before it sends the next piece
//! under its own refreshed keys. Python's `ssl` cannot start a key update, so both are tested here against rustls's
//! own buffered server and client, over a real TCP connection on 127.0.0.1, with a throwaway CA made by rcgen.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use _dragonfly_piece_io::tls::{client_config, server_config, TlsServerStream, TlsStream, Want};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection, StreamOwned};

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));

#[derive(Clone)]
/// PEM bytes of a cluster: the CA, then (chain, key) of the server (an IP SAN of 127.0.0.1) and of the client.
struct Pki {
    ca: Vec<u8>,
    server: (Vec<u8>, Vec<u8>),
    client: (Vec<u8>, Vec<u8>),
}

fn pki() -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new());
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::Certificate::from_params(ca_params).unwrap();
    let leaf = |sans: Vec<String>| {
        let cert = rcgen::Certificate::from_params(rcgen::CertificateParams::new(sans)).unwrap();
        (
            cert.serialize_pem_with_signer(&ca).unwrap().into_bytes(),
            cert.serialize_private_key_pem().into_bytes(),
        )
    };
    Pki {
        ca: ca.serialize_pem().unwrap().into_bytes(),
        server: leaf(vec!["127.0.0.1".into()]),
        client: leaf(vec!["client.test".into()]),
    }
}

/// Deterministic, non-repeating test bytes (a repeating pattern would hide records decrypted out of order).
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn read_exactly(tls: &mut StreamOwned<ServerConnection, TcpStream>, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    tls.read_exact(&mut buf).unwrap();
    buf
}

/// The server sends a piece in `parts`, refreshing its traffic keys between every two of them, after reading the
/// client's first request; then it answers a second request, which the client encrypts after the key updates.
fn serve(listener: TcpListener, pki: &Pki, parts: Vec<Vec<u8>>, second_answer: Vec<u8>) -> usize {
    let config = server_config(&pki.ca, &pki.server.0, &pki.server.1).unwrap();
    let (socket, _) = listener.accept().unwrap();
    socket.set_read_timeout(TIMEOUT).unwrap();
    let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), socket);
    assert_eq!(read_exactly(&mut tls, 4), b"GET1");
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let mut updates = 0;
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            tls.conn.refresh_traffic_keys().unwrap();
            updates += 1;
        }
        tls.write_all(part).unwrap();
        tls.flush().unwrap();
    }
    // Readable only if the client answered every KeyUpdate: rustls decrypts with the client's refreshed keys now.
    assert_eq!(read_exactly(&mut tls, 4), b"GET2");
    tls.write_all(&second_answer).unwrap();
    tls.flush().unwrap();
    updates
}

fn key_updates_mid_piece(part_sizes: &[usize]) {
    let pki = pki();
    let parts: Vec<Vec<u8>> = part_sizes
        .iter()
        .enumerate()
        .map(|(index, &size)| pattern(size, index as u32))
        .collect();
    let piece: Vec<u8> = parts.concat();
    let second_answer = pattern(70_000, 99);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = {
        let pki = pki.clone();
        let (parts, second_answer) = (parts.clone(), second_answer.clone());
        thread::spawn(move || serve(listener, &pki, parts, second_answer))
    };

    let socket = TcpStream::connect(address).unwrap();
    let config: Arc<_> = client_config(&pki.ca, &pki.client.0, &pki.client.1).unwrap();
    let mut stream = TlsStream::connect(config, socket.as_raw_fd(), "127.0.0.1", TIMEOUT).unwrap();
    stream.send_all(b"GET1", TIMEOUT).unwrap();

    // One directory per test: the tests of this file run in parallel in one process.
    let dir = std::env::temp_dir().join(format!(
        "tls-key-update-{}-{}",
        std::process::id(),
        part_sizes.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("piece");
    let file = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // A buffer smaller than the piece and than a part: the key updates land inside and across buffer fills.
    let mut buf = vec![0u8; 48 * 1024];
    let (crc, digest) = stream
        .recv_to_file(
            file.as_raw_fd(),
            0,
            piece.len() as u64,
            &mut buf,
            TIMEOUT,
            true,
        )
        .unwrap();
    assert_eq!(crc, crc32fast::hash(&piece));
    assert_eq!(digest, Some(*blake3::hash(&piece).as_bytes()));
    assert_eq!(std::fs::read(&path).unwrap(), piece);

    stream.send_all(b"GET2", TIMEOUT).unwrap();
    let mut answer = vec![0u8; second_answer.len()];
    stream.recv_exact(&mut answer, TIMEOUT).unwrap();
    assert_eq!(answer, second_answer);

    assert_eq!(server.join().unwrap(), part_sizes.len() - 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_key_update_inside_a_piece() {
    key_updates_mid_piece(&[300_000, 300_000]);
}

#[test]
fn key_updates_between_small_records_and_large_parts() {
    // Parts smaller than a record and larger than the client's 256 KiB socket read, so an update arrives in the
    // middle of a read, at its start and right after a partial record.
    key_updates_mid_piece(&[1, 17_000, 5, 700_000, 16_384, 3, 290_000]);
}

/// Wait (at most TIMEOUT) until `socket` is ready for what the native server asked for.
fn wait_for(socket: &TcpStream, want: Want) {
    let events = match want {
        Want::Read => libc::POLLIN,
        Want::Write => libc::POLLOUT,
    };
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: `fd` is one valid pollfd that lives for the whole call.
    let ready = unsafe { libc::poll(&mut fd, 1, 10_000) };
    assert_eq!(ready, 1, "the socket was not ready within 10 s");
}

/// Read `len` request bytes through the native server.
fn server_recv(server: &mut TlsServerStream, socket: &TcpStream, len: usize) -> Vec<u8> {
    let mut request = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match server.recv(&mut request[filled..]).unwrap() {
            Ok(0) => panic!("the client closed after {filled} of {len} bytes"),
            Ok(n) => filled += n,
            Err(want) => wait_for(socket, want),
        }
    }
    request
}

#[test]
fn the_native_server_follows_the_clients_key_updates() {
    let pki = pki();
    let piece = pattern(900_000, 7);
    let dir = std::env::temp_dir().join(format!("tls-key-update-{}-server", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("content");
    std::fs::write(&path, &piece).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let client = {
        let pki = pki.clone();
        thread::spawn(move || {
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates({
                let mut roots = rustls::RootCertStore::empty();
                let ca = rustls::pki_types::pem::PemObject::from_pem_slice(&pki.ca).unwrap();
                roots.add(ca).unwrap();
                roots
            })
            .with_client_auth_cert(
                vec![rustls::pki_types::pem::PemObject::from_pem_slice(&pki.client.0).unwrap()],
                rustls::pki_types::pem::PemObject::from_pem_slice(&pki.client.1).unwrap(),
            )
            .unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let socket = TcpStream::connect(address).unwrap();
            socket.set_read_timeout(TIMEOUT).unwrap();
            let conn = ClientConnection::new(Arc::new(config), name).unwrap();
            let mut tls = StreamOwned::new(conn, socket);
            tls.write_all(b"GET1").unwrap();
            tls.flush().unwrap();
            // The update asks the server to update its keys too; its answer comes before the piece below.
            tls.conn.refresh_traffic_keys().unwrap();
            tls.write_all(b"GET2").unwrap();
            tls.flush().unwrap();
            let mut head = [0u8; 3];
            tls.read_exact(&mut head).unwrap();
            let mut received = vec![0u8; 900_000];
            tls.read_exact(&mut received).unwrap();
            (head, received)
        })
    };

    let (socket, _) = listener.accept().unwrap();
    socket.set_nonblocking(true).unwrap();
    let config = server_config(&pki.ca, &pki.server.0, &pki.server.1).unwrap();
    let mut server = TlsServerStream::new(config, socket.as_raw_fd()).unwrap();
    while let Some(want) = server.handshake().unwrap() {
        wait_for(&socket, want);
    }
    assert_eq!(server_recv(&mut server, &socket, 4), b"GET1");
    // Encrypted under the client's refreshed keys.
    assert_eq!(server_recv(&mut server, &socket, 4), b"GET2");
    let content = File::open(&path).unwrap();
    server
        .start_send(3, content.as_raw_fd(), 0, piece.len() as u64)
        .unwrap();
    while let Some(want) = server.send_some(b"HDR").unwrap() {
        wait_for(&socket, want);
    }
    let (head, received) = client.join().unwrap();
    assert_eq!(&head, b"HDR");
    assert!(received == piece, "the piece arrived changed");
    std::fs::remove_dir_all(&dir).unwrap();
}
