//! `vera worker --metrics-listen` serves Prometheus metrics, queue depth included (what
//! an autoscaler reads).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scrape(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn worker_serves_queue_depth_for_autoscaling() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.sqlite");
    let data = dir.path().join("data");
    let status = Command::new(env!("CARGO_BIN_EXE_vera"))
        .args(["generate", "--db", &source.display().to_string(), "--files", "20", "--bad-rows-per-kind", "0"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let port = free_port();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_vera"))
        .args(["worker", "--source-db", &source.display().to_string(), "--data-dir", &data.display().to_string()])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Some(body) = scrape(port).filter(|b| b.contains("vera_queue_depth")) {
            break body;
        }
        assert!(Instant::now() < deadline, "no metrics served on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(body.starts_with("HTTP/1.") && body.contains(" 200 "), "{body}");
    assert!(body.contains("# TYPE vera_queue_depth gauge"), "{body}");
    assert!(body.contains("vera_queue_depth{topic=\"pack\",state=\"visible\"} 0"), "{body}");
}
