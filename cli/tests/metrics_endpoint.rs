//! `vera worker --metrics-listen` serves Prometheus metrics, queue depth included (what
//! an autoscaler reads) and the age of the tasks it packs; `vera producer
//! --metrics-listen` serves where the source and the producer are, and how long rows wait.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tests take turns: a port `free_port` hands out is free only until someone binds
/// it, and two tests asking at once can be handed the same one.
static PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let _turn = PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
        if let Ok(Some(status)) = worker.try_wait() {
            panic!("the worker exited ({status}) before serving metrics on port {port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(body.starts_with("HTTP/1.") && body.contains(" 200 "), "{body}");
    assert!(body.contains("# TYPE vera_queue_depth gauge"), "{body}");
    assert!(body.contains("vera_queue_depth{topic=\"pack\",state=\"visible\"} 0"), "{body}");
}

/// Scrapes until `wanted` holds for the body, or fails after 30 s.
fn scrape_until(port: u16, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(body) = scrape(port).filter(|body| wanted(body)) {
            return body;
        }
        assert!(Instant::now() < deadline, "the metrics on port {port} never showed what was expected");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn producer_and_worker_serve_the_pack_lag() {
    let _turn = PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.sqlite").display().to_string();
    let data = dir.path().join("data").display().to_string();
    let vera = || Command::new(env!("CARGO_BIN_EXE_vera"));
    let status = vera()
        .args(["generate", "--db", &source, "--files", "30", "--bad-rows-per-kind", "0"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let producer_port = free_port();
    let mut producer = vera()
        .args(["producer", "--source-db", &source, "--data-dir", &data])
        .args(["--metrics-listen", &format!("127.0.0.1:{producer_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Caught up: the committed watermark reaches the source's newest, and nothing waits.
    let body = scrape_until(producer_port, |body| {
        let newest = gauge(body, "vera_producer_source_newest_watermark");
        newest.is_some() && newest == gauge(body, "vera_producer_committed_watermark")
    });
    let _ = producer.kill();
    let _ = producer.wait();
    assert!(gauge(&body, "vera_producer_source_newest_watermark").unwrap() >= 30.0, "{body}");
    assert_eq!(gauge(&body, "vera_producer_unplanned_age_seconds"), Some(0.0), "{body}");

    let worker_port = free_port();
    let mut worker = vera()
        .args(["worker", "--source-db", &source, "--data-dir", &data, "--retain-days", "0"])
        .args(["--metrics-listen", &format!("127.0.0.1:{worker_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let body = scrape_until(worker_port, |body| body.contains("vera_task_age_seconds_count"));
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(body.contains("vera_task_age_seconds_bucket{le=\"1800\"}"), "{body}");
    assert!(gauge(&body, "vera_task_age_seconds_count").unwrap() >= 1.0, "{body}");
}

/// The value of an unlabelled sample.
fn gauge(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
