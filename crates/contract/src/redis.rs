//! Reading a queue kept in Redis: the length of a list, or a stream consumer group's backlog,
//! through a small RESP2 client (two commands do not justify a client library), polled by a
//! [`RedisPoller`]: the sidecar's `redis` source, and the operator's own reading of a pool that
//! has no ready worker, which is how a pool at zero replicas sees work arrive. A Redis that
//! cannot be read is an error, never zeros.
//!
//! `rediss://` is the same client over TLS (rustls): the server's certificate is verified for
//! the URL's host against the public web roots, plus a private CA bundle if one is given
//! ([`RedisTls`]). Verification cannot be turned off.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use crate::queue::{CONTRACT_VERSION, QueueSnapshot, Scope};

/// Bound on opening a connection (TCP connect, TLS handshake, AUTH, SELECT) and, separately, on
/// one reading, so that a hung Redis (or a plain one asked for TLS) turns into an error quickly.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How often Redis is read. LLEN and XINFO GROUPS are O(1)-ish, so even many pods polling at
/// this rate are cheap for Redis, and a change reaches the watch stream within this period.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A reading older than this is stale (the poller is stuck): missing data.
const MAX_AGE: Duration = Duration::from_secs(3);
/// Bound on one reply line and on a bulk string, so that a wrong server cannot make us buffer.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Bound on an array's element count.
const MAX_ELEMENTS: i64 = 100_000;
/// Deepest a reply may be nested (the top-level one is at depth 0).
const MAX_DEPTH: u8 = 4;
/// Bound on a CA bundle file: a few CAs take a few KiB, and a wrong path (a device, a log)
/// must not make us buffer it.
const MAX_CA_BUNDLE_BYTES: u64 = 1024 * 1024;

/// Which queue to read.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub url: String,
    pub key: String,
    /// `None` for a list, the consumer group for a stream.
    pub group: Option<String>,
    /// Replaces a password in the URL (it comes from a Secret, not the pool's spec).
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisTarget {
    // The URL may carry a password too: neither is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("key", &self.key)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RedisError {
    #[error("bad redis url: {0}")]
    Url(String),
    #[error("redis i/o: {0}")]
    Io(String),
    #[error("redis timed out")]
    Timeout,
    #[error("redis protocol: {0}")]
    Protocol(String),
    #[error("redis error reply: {0}")]
    Reply(String),
    #[error("consumer group {0:?} not found on the stream")]
    NoGroup(String),
    #[error("redis cannot tell the group's lag (entries deleted past its last delivered id)")]
    LagUnknown,
    #[error("redis password: {0}")]
    Password(String),
    #[error("redis tls: {0}")]
    Tls(String),
}

/// A parsed `redis://[[user]:password@]host[:port][/db]` URL, or the same with `rediss://`
/// (TLS).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAddress {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    /// `rediss://`: TLS, with the certificate verified for `host`.
    pub tls: bool,
}

impl std::fmt::Debug for RedisAddress {
    // Everything but the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAddress")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl RedisAddress {
    pub fn parse(url: &str) -> Result<Self, RedisError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rediss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("redis://") {
            (false, rest)
        } else {
            return Err(RedisError::Url(
                "must start with redis:// or rediss://".into(),
            ));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (
                    (!user.is_empty())
                        .then(|| percent_decode(user, "user name"))
                        .transpose()?,
                    Some(percent_decode(pass, "password")?),
                ),
                None => (Some(percent_decode(info, "user name")?), None),
            },
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| RedisError::Url("unclosed [ in host".into()))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(RedisError::Url("missing host".into()));
        }
        // The certificate is verified for this name, so it must be one a certificate can name.
        if tls && ServerName::try_from(host).is_err() {
            return Err(RedisError::Url(format!(
                "{host:?} is not a host name or IP address a certificate can be checked for"
            )));
        }
        let port = match port {
            None => 6379,
            Some(port) => port
                .parse()
                .map_err(|_| RedisError::Url(format!("bad port {port:?}")))?,
        };
        let db = if path.is_empty() {
            0
        } else {
            // Not echoed: with an unencoded '/' in the password, the path holds part of it.
            path.parse().map_err(|_| {
                RedisError::Url(
                    "the path must be a database number (percent-encode '/' and '@' in a password)"
                        .into(),
                )
            })?
        };
        Ok(RedisAddress {
            host: host.to_string(),
            port,
            username,
            password,
            db,
            tls,
        })
    }
}

/// The certificate authorities a `rediss://` connection trusts: the public web roots
/// (Mozilla's, built in), plus the CAs of a PEM bundle, for a Redis whose certificate a private
/// CA signed. The bundle adds to the public roots rather than replacing them, so that one
/// setting serves pools on managed Redis and on a self-managed one alike.
#[derive(Clone, Default)]
pub struct RedisTls {
    private: Option<Arc<PrivateCa>>,
}

struct PrivateCa {
    /// As given: the operator hands it on to the sidecars it injects.
    pem: String,
    certs: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field(
                "private_cas",
                &self.private.as_ref().map_or(0, |ca| ca.certs.len()),
            )
            .finish()
    }
}

impl RedisTls {
    /// The public web roots only.
    pub fn public_roots() -> Self {
        Self::default()
    }

    /// The public web roots and the CA certificates of a PEM bundle, which must hold at least
    /// one usable certificate (anything else in it, a private key say, is ignored).
    pub fn with_ca_pem(pem: &str) -> Result<Self, RedisError> {
        let mut certs = Vec::new();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            certs.push(
                cert.map_err(|e| RedisError::Tls(format!("the CA bundle is not valid PEM: {e}")))?,
            );
        }
        if certs.is_empty() {
            return Err(RedisError::Tls(
                "the CA bundle holds no certificate (no -----BEGIN CERTIFICATE----- block)".into(),
            ));
        }
        // Checked now, so that a bad bundle stops the process at start rather than failing
        // every connection later.
        let mut roots = rustls::RootCertStore::empty();
        for (n, cert) in certs.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                RedisError::Tls(format!(
                    "certificate {} of the CA bundle is not usable: {e}",
                    n + 1
                ))
            })?;
        }
        Ok(RedisTls {
            private: Some(Arc::new(PrivateCa {
                pem: pem.to_owned(),
                certs,
            })),
        })
    }

    /// [`Self::with_ca_pem`] with the bundle read from `path`.
    pub fn with_ca_file(path: &Path) -> Result<Self, RedisError> {
        use std::io::Read;
        let cannot = |e: std::io::Error| {
            RedisError::Tls(format!("cannot read the CA bundle {}: {e}", path.display()))
        };
        let mut pem = String::new();
        std::fs::File::open(path)
            .map_err(cannot)?
            .take(MAX_CA_BUNDLE_BYTES + 1)
            .read_to_string(&mut pem)
            .map_err(cannot)?;
        if pem.len() as u64 > MAX_CA_BUNDLE_BYTES {
            return Err(RedisError::Tls(format!(
                "the CA bundle {} is larger than {MAX_CA_BUNDLE_BYTES} bytes",
                path.display()
            )));
        }
        Self::with_ca_pem(&pem)
    }

    /// The private CA bundle, as given, if there is one.
    pub fn private_ca_pem(&self) -> Option<&str> {
        self.private.as_ref().map(|ca| ca.pem.as_str())
    }

    fn connector(&self) -> Result<TlsConnector, RedisError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        for cert in self.private.iter().flat_map(|ca| &ca.certs) {
            roots
                .add(cert.clone())
                .map_err(|e| RedisError::Tls(e.to_string()))?;
        }
        // The provider named, not the process default: rustls panics on an ambiguous default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RedisError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// What a failed handshake means, in words that say what to fix.
fn handshake_error(host: &str, error: &std::io::Error) -> RedisError {
    use rustls::{CertificateError, Error};
    let reason = match error.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "the server's certificate is not trusted: neither a public root CA nor a CA of the \
             bundle given issued it (a private CA must be given as a CA bundle)"
                .to_string()
        }
        Some(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!("the server's certificate is not valid for {host}"),
        Some(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "the server's certificate has expired".to_string(),
        Some(Error::InvalidCertificate(other)) => {
            format!("the server's certificate is not trusted: {other}")
        }
        Some(Error::InvalidMessage(_)) => {
            "the server does not speak TLS (a plain Redis is redis://, not rediss://)".to_string()
        }
        Some(other) => format!("handshake failed: {other}"),
        None => format!("handshake failed: {error}"),
    };
    RedisError::Tls(reason)
}

/// Decodes `%XX` escapes (RFC 3986), as URLs carry reserved characters in user names and
/// passwords. Errors do not echo the text: it may be a secret.
fn percent_decode(text: &str, what: &str) -> Result<String, RedisError> {
    let bad = || RedisError::Url(format!("bad percent-encoding in the {what}"));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// One command in RESP2 framing.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<String, RedisError> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_REPLY_BYTES as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| RedisError::Io(e.to_string()))?;
    if read == 0 {
        return Err(RedisError::Io("connection closed".into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(RedisError::Protocol(
            "reply line too long or unterminated".into(),
        ));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| RedisError::Protocol("reply line is not UTF-8".into()))
}

/// A bulk string's or an array's declared length, refused past `max` before anything is
/// allocated for it.
fn parse_len(text: &str, max: i64) -> Result<i64, RedisError> {
    let len: i64 = text
        .parse()
        .map_err(|_| RedisError::Protocol(format!("bad length {text:?}")))?;
    if len > max {
        return Err(RedisError::Protocol(format!("reply too large ({len})")));
    }
    Ok(len)
}

/// Reads one reply; nesting is bounded by `depth` so that a hostile server cannot recurse us.
fn read_reply<'a, R: AsyncBufRead + Unpin + Send>(
    reader: &'a mut R,
    depth: u8,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, RedisError>> + Send + 'a>> {
    Box::pin(async move {
        if depth > MAX_DEPTH {
            return Err(RedisError::Protocol("reply nested too deeply".into()));
        }
        let line = read_line(reader).await?;
        let (kind, rest) = line
            .split_at_checked(1)
            .ok_or_else(|| RedisError::Protocol("empty reply line".into()))?;
        match kind {
            "+" => Ok(Reply::Simple(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => rest
                .parse()
                .map(Reply::Integer)
                .map_err(|_| RedisError::Protocol(format!("bad integer {rest:?}"))),
            "$" => {
                let len = parse_len(rest, MAX_REPLY_BYTES as i64)?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut data = vec![0; len as usize + 2];
                reader
                    .read_exact(&mut data)
                    .await
                    .map_err(|e| RedisError::Io(e.to_string()))?;
                if !data.ends_with(b"\r\n") {
                    return Err(RedisError::Protocol("bulk string not terminated".into()));
                }
                data.truncate(len as usize);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let len = parse_len(rest, MAX_ELEMENTS)?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                let mut items = Vec::with_capacity(len.min(64) as usize);
                for _ in 0..len {
                    items.push(read_reply(reader, depth + 1).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Err(RedisError::Protocol(format!(
                "unknown reply type {other:?}"
            ))),
        }
    })
}

/// The RESP reader and its bounds, public for the fuzz target (`fuzz/`) only: not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::{AsyncBufRead, RedisError, Reply};

    /// Bound on a reply line and on a bulk string.
    pub const MAX_REPLY_BYTES: usize = super::MAX_REPLY_BYTES;
    /// Bound on an array's element count.
    pub const MAX_ELEMENTS: i64 = super::MAX_ELEMENTS;
    /// Deepest a reply may sit (the top-level reply is at depth 0).
    pub const MAX_DEPTH: u8 = super::MAX_DEPTH;

    /// Reads one reply, as the client does after each command.
    pub async fn read_reply<R: AsyncBufRead + Unpin + Send>(
        reader: &mut R,
    ) -> Result<Reply, RedisError> {
        super::read_reply(reader, 0).await
    }
}

/// A connection's byte stream, plain TCP or TLS over it: one client for both schemes.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

struct Connection {
    reader: BufReader<Box<dyn Stream>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects, shakes hands (with `tls`, for a `rediss://` address), authenticates and
    /// selects the database, all by `deadline`.
    async fn open(
        address: &RedisAddress,
        tls: Option<&TlsConnector>,
        deadline: tokio::time::Instant,
    ) -> Result<Self, RedisError> {
        let tcp = tokio::time::timeout_at(
            deadline,
            TcpStream::connect((address.host.as_str(), address.port)),
        )
        .await
        .map_err(|_| RedisError::Timeout)?
        .map_err(|e| RedisError::Io(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match (address.tls, tls) {
            (false, _) => Box::new(tcp),
            (true, Some(connector)) => {
                let name = ServerName::try_from(address.host.clone())
                    .map_err(|e| RedisError::Url(e.to_string()))?;
                let handshake = connector.connect(name, tcp);
                let stream = tokio::time::timeout_at(deadline, handshake)
                    .await
                    .map_err(|_| {
                        RedisError::Tls(format!(
                            "no TLS handshake within {IO_TIMEOUT:?} (does the server speak TLS?)"
                        ))
                    })?
                    .map_err(|e| handshake_error(&address.host, &e))?;
                Box::new(stream)
            }
            (true, None) => return Err(RedisError::Tls("no TLS configuration".into())),
        };
        let mut connection = Connection {
            reader: BufReader::new(stream),
        };
        let setup = async {
            if let Some(password) = &address.password {
                let reply = match &address.username {
                    Some(user) => {
                        connection
                            .command(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                            .await?
                    }
                    None => connection.command(&[b"AUTH", password.as_bytes()]).await?,
                };
                expect_ok(reply)?;
            }
            if address.db != 0 {
                let db = address.db.to_string();
                expect_ok(connection.command(&[b"SELECT", db.as_bytes()]).await?)?;
            }
            Ok::<(), RedisError>(())
        };
        tokio::time::timeout_at(deadline, setup)
            .await
            .map_err(|_| RedisError::Timeout)??;
        Ok(connection)
    }

    async fn command(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let stream = self.reader.get_mut();
        stream
            .write_all(&encode(args))
            .await
            .map_err(|e| RedisError::Io(e.to_string()))?;
        // TLS buffers what is written; a plain socket's flush does nothing.
        stream
            .flush()
            .await
            .map_err(|e| RedisError::Io(e.to_string()))?;
        match read_reply(&mut self.reader, 0).await? {
            Reply::Error(message) => Err(RedisError::Reply(message)),
            reply => Ok(reply),
        }
    }
}

fn expect_ok(reply: Reply) -> Result<(), RedisError> {
    match reply {
        Reply::Simple(ok) if ok == "OK" => Ok(()),
        other => Err(RedisError::Protocol(format!("unexpected reply {other:?}"))),
    }
}

/// What one read found: `(queued, in_flight)`.
type Reading = (u64, u64);

fn count(value: i64) -> Result<u64, RedisError> {
    u64::try_from(value).map_err(|_| RedisError::Protocol(format!("negative count {value}")))
}

/// Finds `field` in a flat `[name, value, name, value, …]` RESP2 map.
fn field<'a>(pairs: &'a [Reply], name: &str) -> Option<&'a Reply> {
    pairs.chunks_exact(2).find_map(|pair| match &pair[0] {
        Reply::Bulk(Some(key)) if key == name.as_bytes() => Some(&pair[1]),
        Reply::Simple(key) if key == name => Some(&pair[1]),
        _ => None,
    })
}

async fn read_once(
    connection: &mut Connection,
    target: &RedisTarget,
) -> Result<Reading, RedisError> {
    match &target.group {
        None => match connection
            .command(&[b"LLEN", target.key.as_bytes()])
            .await?
        {
            Reply::Integer(len) => Ok((count(len)?, 0)),
            other => Err(RedisError::Protocol(format!("LLEN answered {other:?}"))),
        },
        Some(group) => {
            // XINFO GROUPS gives both the group's pending entries (delivered, not acked: in
            // flight) and its lag (not yet delivered: queued) in one round trip.
            let reply = connection
                .command(&[b"XINFO", b"GROUPS", target.key.as_bytes()])
                .await?;
            let Reply::Array(Some(groups)) = reply else {
                return Err(RedisError::Protocol(format!(
                    "XINFO GROUPS answered {reply:?}"
                )));
            };
            for entry in &groups {
                let Reply::Array(Some(pairs)) = entry else {
                    return Err(RedisError::Protocol(
                        "XINFO GROUPS entry is not a map".into(),
                    ));
                };
                if !matches!(field(pairs, "name"), Some(Reply::Bulk(Some(name))) if name == group.as_bytes())
                {
                    continue;
                }
                let pending = match field(pairs, "pending") {
                    Some(Reply::Integer(pending)) => count(*pending)?,
                    _ => return Err(RedisError::Protocol("group has no pending count".into())),
                };
                let lag = match field(pairs, "lag") {
                    Some(Reply::Integer(lag)) => count(*lag)?,
                    Some(Reply::Bulk(None)) => return Err(RedisError::LagUnknown),
                    _ => {
                        return Err(RedisError::Protocol(
                            "group has no lag (Redis older than 7.0?)".into(),
                        ));
                    }
                };
                return Ok((lag, pending));
            }
            Err(RedisError::NoGroup(group.clone()))
        }
    }
}

/// Reads one queue, keeping its connection between reads and starting afresh after an error.
struct RedisReader {
    target: RedisTarget,
    address: RedisAddress,
    /// For a `rediss://` address.
    tls: Option<TlsConnector>,
    connection: Option<Connection>,
}

impl std::fmt::Debug for RedisReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReader")
            .field("target", &self.target)
            .field("address", &self.address)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl RedisReader {
    /// Fails only on a URL that cannot be parsed (or a TLS setup that cannot be built); Redis
    /// itself is first contacted by `read`.
    fn new(target: RedisTarget, tls: &RedisTls) -> Result<Self, RedisError> {
        let mut address = RedisAddress::parse(&target.url)?;
        if let Some(password) = &target.password {
            address.password = Some(password.clone());
        }
        let tls = if address.tls {
            Some(tls.connector()?)
        } else {
            None
        };
        Ok(RedisReader {
            target,
            address,
            tls,
            connection: None,
        })
    }

    /// One reading, `(queued, in_flight)`: opening a connection if there is none takes at
    /// most [`IO_TIMEOUT`], and so does the reading on it.
    async fn read(&mut self) -> Result<Reading, RedisError> {
        let reading = self.read_on_connection().await;
        if reading.is_err() {
            // The connection may be mid-reply or dead: start afresh next time.
            self.connection = None;
        }
        reading
    }

    async fn read_on_connection(&mut self) -> Result<Reading, RedisError> {
        let open = match &mut self.connection {
            Some(open) => open,
            None => {
                let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
                let opened = Connection::open(&self.address, self.tls.as_ref(), deadline).await?;
                self.connection.insert(opened)
            }
        };
        match tokio::time::timeout(IO_TIMEOUT, read_once(open, &self.target)).await {
            Ok(reading) => reading,
            Err(_) => Err(RedisError::Timeout),
        }
    }
}

/// A reading as the contract's pool-wide snapshot. A Redis queue has no counters of its own
/// (arrivals and service times belong to the pods' traffic), so those are zero.
pub fn snapshot((queued, in_flight): (u64, u64), capacity: u64) -> QueueSnapshot {
    QueueSnapshot {
        version: CONTRACT_VERSION,
        queued,
        in_flight,
        capacity,
        arrived_total: 0,
        completed_total: 0,
        busy_seconds_total: 0.0,
        oldest_in_flight_seconds: 0.0,
        draining: false,
        scope: Scope::Pool,
    }
}

#[derive(Debug)]
struct Latest {
    at: Instant,
    reading: Result<Reading, RedisError>,
}

/// Polls one queue in the background and keeps the latest reading: the sidecar's `redis`
/// source, and the operator's own reading of a pool with no ready worker.
#[derive(Debug)]
pub struct RedisPoller {
    /// Taken by the one `run` loop.
    reader: tokio::sync::Mutex<RedisReader>,
    capacity: u64,
    latest: Mutex<Option<Latest>>,
    changed: watch::Sender<u64>,
}

impl RedisPoller {
    /// A poller of `target`; `tls` says whom a `rediss://` URL's certificate may come from.
    pub fn new(target: RedisTarget, capacity: u64, tls: &RedisTls) -> Result<Self, RedisError> {
        Ok(RedisPoller {
            reader: tokio::sync::Mutex::new(RedisReader::new(target, tls)?),
            capacity,
            latest: Mutex::new(None),
            changed: watch::channel(0).0,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Sets the password to authenticate with, before [`Self::run`] starts.
    pub async fn use_password(&self, password: String) {
        let mut reader = self.reader.lock().await;
        reader.address.password = Some(password);
        reader.connection = None;
    }

    /// Records why there is no reading (e.g. the password's Secret cannot be read).
    pub fn fail(&self, error: RedisError) {
        self.store(Err(error));
    }

    /// Polls until the task is dropped, reconnecting after any error.
    pub async fn run(&self) {
        let mut reader = self.reader.lock().await;
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let reading = reader.read().await;
            self.store(reading);
        }
    }

    fn store(&self, reading: Result<Reading, RedisError>) {
        let changed = {
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            let changed = latest.as_ref().is_none_or(|l| l.reading != reading);
            match (latest.as_ref(), &reading) {
                (Some(Latest { reading: Ok(_), .. }) | None, Err(error)) => {
                    tracing::warn!(%error, "cannot read the queue from redis")
                }
                (
                    Some(Latest {
                        reading: Err(_), ..
                    }),
                    Ok(_),
                ) => tracing::info!("reading redis again"),
                _ => {}
            }
            *latest = Some(Latest {
                at: Instant::now(),
                reading,
            });
            changed
        };
        if changed {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// The latest reading as a snapshot, or why there is none.
    pub fn snapshot(&self) -> Result<QueueSnapshot, String> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let latest = latest.as_ref().ok_or("redis not read yet")?;
        if latest.at.elapsed() > MAX_AGE {
            return Err("redis reading is stale".into());
        }
        let reading = latest.reading.clone().map_err(|e| e.to_string())?;
        Ok(snapshot(reading, self.capacity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let a = RedisAddress::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.db, a.password),
            ("127.0.0.1", 6380, 2, None)
        );
        let b = RedisAddress::parse("redis://:s3cret@redis.ns.svc").unwrap();
        assert_eq!(
            (b.port, b.username, b.password.as_deref()),
            (6379, None, Some("s3cret"))
        );
        let c = RedisAddress::parse("redis://user:pw@[::1]:7000").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.username.as_deref()),
            ("::1", 7000, Some("user"))
        );
        let d = RedisAddress::parse("redis://app:p%2Fss%40w%3Ard@h/1").unwrap();
        assert_eq!(
            (d.username.as_deref(), d.password.as_deref(), d.db),
            (Some("app"), Some("p/ss@w:rd"), 1)
        );
        let leaky = RedisAddress::parse("redis://:top/secret@h").unwrap_err();
        assert!(!leaky.to_string().contains("secret"), "{leaky}");
        assert!(!a.tls && !b.tls && !c.tls && !d.tls);
        for bad in [
            "http://x",
            "redis:/h",
            "rediss:h",
            "REDISS://h",
            "rediss://",
            "rediss://h:port",
            "rediss://[::1",
            "rediss://bad host",
            "redis://:bad%zz@h",
            "redis://:cut%4@h",
            "redis://",
            "redis://h:port",
            "redis://h:1/x",
            "redis://[::1",
            "redis://h:99999",
        ] {
            assert!(RedisAddress::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn parses_tls_urls_with_the_same_grammar() {
        let a = RedisAddress::parse("rediss://cache.example.com").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.db, a.tls, a.username, a.password),
            ("cache.example.com", 6379, 0, true, None, None)
        );
        let b = RedisAddress::parse("rediss://reader:p%40ss@10.0.0.7:6380/4").unwrap();
        assert_eq!(
            (
                b.host.as_str(),
                b.port,
                b.db,
                b.tls,
                b.username.as_deref(),
                b.password.as_deref()
            ),
            ("10.0.0.7", 6380, 4, true, Some("reader"), Some("p@ss"))
        );
        let c = RedisAddress::parse("rediss://:pw@[::1]:7000").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.tls), ("::1", 7000, true));
        let printed = format!("{b:?}");
        assert!(
            printed.contains("tls: true") && !printed.contains("p@ss"),
            "{printed}"
        );
        let leaky = RedisAddress::parse("rediss://:top/secret@h").unwrap_err();
        assert!(!leaky.to_string().contains("secret"), "{leaky}");
        let scheme = RedisAddress::parse("http://x").unwrap_err().to_string();
        assert!(scheme.contains("redis:// or rediss://"), "{scheme}");
    }

    /// A throwaway CA (P-256, until 2126) for parsing only: nothing it signed is served anywhere.
    const TEST_CA: &str = include_str!("../testdata/test-ca.pem");

    #[test]
    fn a_ca_bundle_needs_a_usable_certificate() {
        let tls = RedisTls::with_ca_pem(TEST_CA).unwrap();
        assert_eq!(tls.private_ca_pem(), Some(TEST_CA));
        assert!(format!("{tls:?}").contains("private_cas: 1"), "{tls:?}");
        assert!(tls.connector().is_ok());
        let two = RedisTls::with_ca_pem(&format!("{TEST_CA}{TEST_CA}")).unwrap();
        assert!(format!("{two:?}").contains("private_cas: 2"), "{two:?}");
        assert_eq!(RedisTls::public_roots().private_ca_pem(), None);
        assert!(RedisTls::public_roots().connector().is_ok());

        let empty = RedisTls::with_ca_pem("").unwrap_err().to_string();
        assert!(empty.contains("no certificate"), "{empty}");
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let key_only = RedisTls::with_ca_pem(key_only).unwrap_err().to_string();
        assert!(key_only.contains("no certificate"), "{key_only}");
        let cut = RedisTls::with_ca_pem(&TEST_CA[..200])
            .unwrap_err()
            .to_string();
        assert!(cut.contains("not valid PEM"), "{cut}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let garbage = RedisTls::with_ca_pem(garbage).unwrap_err().to_string();
        assert!(
            garbage.contains("certificate 1 of the CA bundle"),
            "{garbage}"
        );

        let missing = RedisTls::with_ca_file(Path::new("/nonexistent/ca.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("cannot read the CA bundle /nonexistent/ca.pem"),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn a_tls_handshake_with_a_silent_server_ends_within_the_timeout() {
        // Accepts and never answers: the handshake would wait for ever without the bound.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let target = RedisTarget {
            url: format!("rediss://127.0.0.1:{port}"),
            key: "jobs".into(),
            group: None,
            password: None,
        };
        let mut reader = RedisReader::new(target, &RedisTls::public_roots()).unwrap();
        let started = Instant::now();
        let error = reader.read().await.unwrap_err();
        assert!(
            started.elapsed() < 2 * IO_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(&error, RedisError::Tls(message) if message.contains("no TLS handshake")),
            "{error}"
        );
    }

    async fn parse_reply(bytes: &[u8]) -> Result<Reply, RedisError> {
        let mut reader = BufReader::new(bytes);
        read_reply(&mut reader, 0).await
    }

    #[tokio::test]
    async fn parses_replies_and_refuses_garbage() {
        assert_eq!(parse_reply(b":42\r\n").await, Ok(Reply::Integer(42)));
        assert_eq!(parse_reply(b"$-1\r\n").await, Ok(Reply::Bulk(None)));
        assert_eq!(
            parse_reply(b"*2\r\n$4\r\nname\r\n:7\r\n").await,
            Ok(Reply::Array(Some(vec![
                Reply::Bulk(Some(b"name".to_vec())),
                Reply::Integer(7)
            ])))
        );
        assert_eq!(
            parse_reply(b"-ERR nope\r\n").await,
            Ok(Reply::Error("ERR nope".into()))
        );
        for bad in [
            &b""[..],
            b"?\r\n",
            b":x\r\n",
            b"$5\r\nab\r\n",
            b"$999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b":1",
        ] {
            assert!(parse_reply(bad).await.is_err(), "{bad:?} was accepted");
        }
    }

    #[tokio::test]
    async fn a_bulk_string_is_bounded_by_the_reply_bound_not_the_element_count() {
        // Found by fuzzing (fuzz/corpus/resp/bulk-past-reply-bound): one bound served both, so
        // a bulk string could be 100 000 bytes, past the 64 KiB promised.
        let mut at_bound = format!("${MAX_REPLY_BYTES}\r\n").into_bytes();
        at_bound.extend(std::iter::repeat_n(b'x', MAX_REPLY_BYTES));
        at_bound.extend_from_slice(b"\r\n");
        assert!(
            matches!(parse_reply(&at_bound).await, Ok(Reply::Bulk(Some(data))) if data.len() == MAX_REPLY_BYTES)
        );
        let past = format!("${}\r\n", MAX_REPLY_BYTES + 1);
        assert!(matches!(
            parse_reply(past.as_bytes()).await,
            Err(RedisError::Protocol(_))
        ));
        assert!(parse_reply(b"$100000\r\nabc\r\n").await.is_err());
        // Arrays keep their own bound.
        let mut array = format!("*{MAX_ELEMENTS}\r\n").into_bytes();
        for _ in 0..MAX_ELEMENTS {
            array.extend_from_slice(b":1\r\n");
        }
        assert!(
            matches!(parse_reply(&array).await, Ok(Reply::Array(Some(items))) if items.len() as i64 == MAX_ELEMENTS)
        );
        let past = format!("*{}\r\n", MAX_ELEMENTS + 1);
        assert!(parse_reply(past.as_bytes()).await.is_err());
    }

    #[test]
    fn a_target_prints_without_its_secrets() {
        let target = RedisTarget {
            url: "redis://:in-url@r:6379".into(),
            key: "jobs".into(),
            group: None,
            password: Some("from-secret".into()),
        };
        let printed = format!("{target:?}");
        assert!(printed.contains("jobs"), "{printed}");
        assert!(
            !printed.contains("in-url") && !printed.contains("from-secret"),
            "{printed}"
        );
        let poller = RedisPoller::new(target, 10, &RedisTls::public_roots()).unwrap();
        let printed = format!("{poller:?}");
        assert!(printed.contains("6379"), "{printed}");
        assert!(
            !printed.contains("in-url") && !printed.contains("from-secret"),
            "{printed}"
        );
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(
            encode(&[b"LLEN", b"jobs"]),
            b"*2\r\n$4\r\nLLEN\r\n$4\r\njobs\r\n"
        );
    }
}
