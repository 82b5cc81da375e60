//! A throwaway redis-server (the Debian package that `scripts/test-deps` installs) on a loopback
//! port, without persistence, killed on drop: the queue of the end-to-end tests and the sidecar
//! tests of the `redis` source.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use asyncpool_contract::redis::encode;

/// How long redis-server may take to answer its first PING.
const START_LIMIT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    pub addr: SocketAddr,
    /// What clients must AUTH with, if anything.
    password: Option<String>,
    child: Child,
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
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(password) = password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server (run scripts/test-deps): {e}"))?;
        let mut server = RedisServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            password: password.map(str::to_owned),
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

    /// `redis://` URL of database `db`.
    pub fn url(&self, db: u32) -> String {
        format!("redis://{}/{db}", self.addr)
    }

    /// Sends one command on a fresh connection and returns the first line of the reply (the
    /// whole reply for the integers, statuses and errors that tests look at).
    pub async fn command(&self, args: &[&str]) -> Result<String, String> {
        let mut stream = TcpStream::connect(self.addr)
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
