//! The loopback S3 server under test: an s3s-fs process of our own, on a free port, over a
//! fresh directory, stopped when the run ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use vera_store_s3::{S3Settings, S3Store};

pub const ACCESS_KEY: &str = "loadtest";
pub const SECRET_KEY: &str = "loadtest-secret";

/// A running S3 endpoint: our own s3s-fs child, or one given with `--endpoint`.
pub struct S3Server {
    pub endpoint: String,
    pub description: String,
    child: Option<Child>,
}

/// Finds the s3s-fs binary: `--s3s-fs`, then PATH, then `~/.cargo/bin`.
fn find_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|dir| dir.join("s3s-fs")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|path| path.is_file()).context(
        "s3s-fs is not installed; run `scripts/s3s-fs` once (it installs s3s-fs 0.14.1 with cargo, \
         about 2 minutes), or pass --endpoint URL of a running S3-compatible server",
    )
}

/// s3s-fs does not set TCP_NODELAY, so a response it writes in several segments stalls
/// on the client's delayed ACK (40 ms on Linux) on a kept-alive connection: that would be
/// the server being measured, not VERA. This loopback relay reads s3s-fs's responses with
/// TCP_QUICKACK re-armed before every read, so each segment is acknowledged at once and
/// Nagle's algorithm never waits. Requests pass through untouched. Returns its port.
async fn relay(upstream_port: u16) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let (mut client_read, mut client_write) = client.into_split();
                let (mut upstream_read, mut upstream_write) = upstream.into_split();
                let requests = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
                    let _ = upstream_write.shutdown().await;
                });
                let mut buffer = vec![0u8; 256 * 1024];
                loop {
                    let _ = upstream_read.as_ref().set_quickack(true);
                    match upstream_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if client_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = client_write.shutdown().await;
                requests.abort();
            });
        }
    });
    Ok(port)
}

impl S3Server {
    /// Starts s3s-fs over `root` on a free loopback port and waits until it answers.
    pub async fn start(binary: Option<&Path>, root: &Path) -> anyhow::Result<Self> {
        let binary = find_binary(binary)?;
        std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(root.with_extension("log"))?;
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("s3s-fs did not listen on port {port} within 30 s; see {}", root.with_extension("log").display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let relay = relay(port).await?;
        Ok(S3Server {
            endpoint: format!("http://127.0.0.1:{relay}"),
            description: format!("s3s-fs ({}) over {}, through a quick-ACK relay", binary.display(), root.display()),
            child: Some(child),
        })
    }

    /// The process id of the server we started (`None` for `--endpoint`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn external(endpoint: String) -> Self {
        S3Server { description: format!("S3 server at {endpoint}"), endpoint, child: None }
    }

    /// A client for `bucket`, counting its requests into `counts` when given.
    pub fn store(&self, bucket: &str, counts: Option<std::sync::Arc<vera_store::counting::RequestCounts>>) -> S3Store {
        let (access, secret) = match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
            (Ok(access), Ok(secret)) if self.child.is_none() => (access, secret),
            _ => (ACCESS_KEY.to_owned(), SECRET_KEY.to_owned()),
        };
        let settings = S3Settings {
            endpoint: Some(self.endpoint.clone()),
            force_path_style: true,
            // s3s-fs fails suffix ranges longer than the object (small segments).
            suffix_fallback: self.child.is_some(),
            ..S3Settings::new(bucket)
        };
        let store = S3Store::with_static_credentials(&settings, &access, &secret);
        match counts {
            Some(counts) => store.with_request_counts(counts),
            None => store,
        }
    }
}
