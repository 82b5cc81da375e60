//! A throwaway redis-server (the Debian package that `scripts/test-deps` installs) on a loopback
//! port, without persistence, killed on drop: the queue of the end-to-end tests and the sidecar
//! tests of the `redis` source. In TLS mode its clients' port speaks TLS only, with a throwaway
//! CA and server certificate (made with the `openssl` command) for 127.0.0.1 and localhost.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use asyncpool_contract::redis::encode;

/// How long redis-server may take to answer its first PING.
const START_LIMIT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    /// Where the clients under test connect: TLS only in TLS mode.
    pub addr: SocketAddr,
    /// Where [`Self::command`] connects: `addr`, or in TLS mode a plain port beside it, so that
    /// the harness does not depend on the TLS client it tests.
    admin: SocketAddr,
    /// What clients must AUTH with, if anything.
    password: Option<String>,
    /// TLS mode's certificates.
    tls: Option<TlsFiles>,
    child: Child,
}

/// A throwaway CA and the server certificate it signed, removed on drop.
struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl RedisServer {
    /// Starts redis-server on `127.0.0.1:port` and waits until it answers.
    pub async fn start_on(port: u16) -> Result<RedisServer, String> {
        Self::start_with_password(port, None).await
    }

    /// The same, with `requirepass` when `password` is given.
    pub async fn start_with_password(
        port: u16,
        password: Option<&str>,
    ) -> Result<RedisServer, String> {
        Self::start(port, None, password).await
    }

    /// Starts redis-server with TLS on `127.0.0.1:tls_port` (clients are not asked for a
    /// certificate), its certificate signed by a throwaway CA ([`Self::ca_file`]) for
    /// `127.0.0.1` and `localhost`, and the harness's plain port on `admin_port`.
    pub async fn start_tls(tls_port: u16, admin_port: u16) -> Result<RedisServer, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        make_certificates(dir.path()).await?;
        Self::start(admin_port, Some((tls_port, TlsFiles { dir })), None).await
    }

    async fn start(
        port: u16,
        tls: Option<(u16, TlsFiles)>,
        password: Option<&str>,
    ) -> Result<RedisServer, String> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(password) = password {
            command.args(["--requirepass", password]);
        }
        let (addr, tls) = match tls {
            None => (SocketAddr::from(([127, 0, 0, 1], port)), None),
            Some((tls_port, files)) => {
                let path = |name: &str| files.dir.path().join(name);
                command
                    .args(["--tls-port", &tls_port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(path("server.pem"))
                    .arg("--tls-key-file")
                    .arg(path("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(path("ca.pem"))
                    .args(["--tls-auth-clients", "no"]);
                (SocketAddr::from(([127, 0, 0, 1], tls_port)), Some(files))
            }
        };
        let child = command
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server (run scripts/test-deps): {e}"))?;
        let mut server = RedisServer {
            addr,
            admin: SocketAddr::from(([127, 0, 0, 1], port)),
            password: password.map(str::to_owned),
            tls,
            child,
        };
        let start = Instant::now();
        while server.command(&["PING"]).await.as_deref() != Ok("+PONG") {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server exited at start: {status}"));
            }
            if start.elapsed() > START_LIMIT {
                return Err(format!(
                    "redis-server did not answer within {START_LIMIT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    /// URL of database `db`: `redis://`, or `rediss://` in TLS mode.
    pub fn url(&self, db: u32) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{}/{db}", self.addr)
    }

    /// `redis://` URL of database `db` on the harness's own port: plain even in TLS mode, for
    /// the processes a test runs beside the one whose TLS it checks.
    pub fn plain_url(&self, db: u32) -> String {
        format!("redis://{}/{db}", self.admin)
    }

    /// TLS mode's CA certificate (PEM), which signed the server's.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(TlsFiles::ca)
    }

    /// Adds (or resets) the ACL user `name` with `password` and the ACL `rules` (e.g.
    /// `["~jobs", "+llen"]`: keys, then commands).
    pub async fn add_user(&self, name: &str, password: &str, rules: &[&str]) -> Result<(), String> {
        let password = format!(">{password}");
        let mut args = vec!["ACL", "SETUSER", name, "reset", "on", password.as_str()];
        args.extend_from_slice(rules);
        match self.command(&args).await?.as_str() {
            "+OK" => Ok(()),
            other => Err(format!("ACL SETUSER {name} answered {other}")),
        }
    }

    /// Sends one command on a fresh connection and returns the first line of the reply (the
    /// whole reply for the integers, statuses and errors that tests look at).
    pub async fn command(&self, args: &[&str]) -> Result<String, String> {
        let mut stream = TcpStream::connect(self.admin)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(password) = &self.password {
            stream
                .write_all(&encode(&[b"AUTH", password.as_bytes()]))
                .await
                .map_err(|e| e.to_string())?;
            let ok = read_line(&mut stream).await?;
            if ok != "+OK" {
                return Err(format!("AUTH answered {ok}"));
            }
        }
        let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
        stream
            .write_all(&encode(&args))
            .await
            .map_err(|e| e.to_string())?;
        read_line(&mut stream).await
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CA and a server certificate it signed, for 127.0.0.1 and localhost, valid for two days,
/// written to `dir` (ca.pem; server.pem and server.key, for redis-server). P-256 keys: quick to
/// make.
async fn make_certificates(dir: &Path) -> Result<(), String> {
    const CA_CONFIG: &str = "\
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = asyncpool test CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
";
    const SERVER_EXTENSIONS: &str = "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
";
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("writing {name}: {e}"))
    };
    write("ca.cnf", CA_CONFIG)?;
    write("server.ext", SERVER_EXTENSIONS)?;
    // Every argument is one word: split on spaces.
    const P256: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let steps = [
        format!("req -x509 -new {P256} -keyout ca.key -out ca.pem -days 2 -config ca.cnf"),
        format!("req -new {P256} -keyout server.key -out server.csr -subj /CN=localhost"),
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
         -days 2 -extfile server.ext"
            .to_owned(),
    ];
    for step in &steps {
        let output = tokio::process::Command::new("openssl")
            .args(step.split_whitespace())
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run openssl (run scripts/test-deps): {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "openssl {step}: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    Ok(())
}

/// The first line of the next reply (bytes are read one at a time: short replies only).
async fn read_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if stream.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
            return Err("redis closed the connection".into());
        }
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}
