//! A throwaway redis-server (the Debian package that `scripts/test-deps` installs) on a loopback
//! port, without persistence, killed on drop: the queue of the end-to-end tests and the sidecar
//! tests of the `redis` source.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::queue::redis::encode;

/// How long redis-server may take to answer its first PING.
const START_LIMIT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    pub addr: SocketAddr,
    child: Child,
}

impl RedisServer {
    /// Starts redis-server on `127.0.0.1:port` and waits until it answers.
    pub async fn start_on(port: u16) -> Result<RedisServer, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server (run scripts/test-deps): {e}"))?;
        let mut server = RedisServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
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
        let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
        stream
            .write_all(&encode(&args))
            .await
            .map_err(|e| e.to_string())?;
        let mut reply = vec![0u8; 4096];
        let n = stream.read(&mut reply).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&reply[..n]).into_owned();
        Ok(text.lines().next().unwrap_or_default().to_string())
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
