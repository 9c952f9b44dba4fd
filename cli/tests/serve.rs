//! `vera serve` as a real process over an embedded deployment: files come back over HTTP
//! byte-identical with their hash as ETag, and every read is audited on the bus.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::first_row;

fn vera(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_vera")).args(args).stdin(Stdio::null()).output().unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One HTTP/1.1 request; returns status line, headers and body.
fn http_get(port: u16, path: &str) -> Option<(String, String, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    Some((status.to_owned(), headers.to_ascii_lowercase(), raw[split + 4..].to_vec()))
}

/// Address directories under `dir`, a local store, that hold packed segments but no
/// generation 0 (`g000000.vera`).
fn addresses_without_generation_0(dir: &std::path::Path) -> u64 {
    let (mut packed, mut zero, mut nested) = (false, false, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            nested += addresses_without_generation_0(&entry.path());
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        packed |= name.starts_with('g') && name.ends_with(".vera") && !name.contains(".r");
        zero |= name == "g000000.vera";
    }
    u64::from(packed && !zero) + nested
}

fn audit_depth(data: &str) -> u64 {
    let status: serde_json::Value = serde_json::from_str(&vera(&["bus-status", "--data-dir", data])).unwrap();
    status["audit"]["depth"]["visible"].as_u64().unwrap()
}

/// Object sizes of the packed segments of generation 1 and up (`g000001.vera`, …) under
/// `dir`, a local store: each file is `"VERALOBJ"`, a u32 LE header length, the header,
/// then the object (store/src/local.rs).
fn later_generations(dir: &std::path::Path) -> Vec<u64> {
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            sizes.extend(later_generations(&path));
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let generation = name.strip_prefix('g').and_then(|rest| rest.strip_suffix(".vera"));
        if generation.and_then(|g| g.parse::<u32>().ok()).is_some_and(|g| g > 0) {
            let file = std::fs::read(&path).unwrap();
            assert_eq!(&file[..8], b"VERALOBJ", "{}", path.display());
            let header_len = u32::from_le_bytes(file[8..12].try_into().unwrap()) as usize;
            sizes.push((file.len() - 12 - header_len) as u64);
        }
    }
    sizes
}

#[test]
fn serve_answers_files_over_http_and_audits_each_read() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.sqlite");
    let (source_s, data) = (source.display().to_string(), dir.path().join("data").display().to_string());
    vera(&["generate", "--db", &source_s, "--files", "300", "--days", "2"]);
    // Small slots, so that the late arrivals land in later generations of their day's
    // address and reads probe more than one segment.
    vera(&["producer", "--drain", "--slot-rows", "100", "--data-dir", &data, "--source-db", &source_s]);
    vera(&[
        "worker",
        "--exit-when-idle-ms",
        "500",
        "--retain-days",
        "0",
        // Later generations, as wave 1 wrote them, to test how reads find them.
        "--direct-min-files",
        "0",
        "--data-dir",
        &data,
        "--source-db",
        &source_s,
    ]);
    let audits_before = audit_depth(&data);

    // `vera stats` reports the later generations a cold read may have to fit in its
    // suffix: the same count and largest size as the segment files on disk.
    let stats: serde_json::Value = serde_json::from_str(&vera(&["stats", "--json", "--data-dir", &data])).unwrap();
    let later = later_generations(std::path::Path::new(&data));
    assert!(!later.is_empty(), "slots of 100 rows over 2 days make later generations");
    assert_eq!(stats["later_generation_segments"].as_u64(), Some(later.len() as u64), "{stats}");
    assert_eq!(stats["largest_later_generation_bytes"].as_u64(), later.iter().copied().max(), "{stats}");
    // 300 small files: every footer and index fits in the reader's default suffix.
    assert_eq!(stats["indexes_over_default_suffix"].as_u64(), Some(0), "{stats}");
    // Every file's cold-read cost is counted, and the later generations' files cost more
    // than one GET (generation 0's suffix first).
    let by_gets = stats["files_by_cold_read_gets"].as_object().expect("files_by_cold_read_gets");
    let counted: u64 = by_gets.values().map(|files| files.as_u64().unwrap()).sum();
    assert_eq!(Some(counted), stats["files"].as_u64(), "{stats}");
    assert!(by_gets.keys().any(|gets| gets.parse::<u64>().unwrap() >= 2), "{stats}");
    assert_eq!(stats["addresses_repacked"].as_u64(), Some(0), "{stats}");
    // The seeded corpus has late arrivals of the day before it starts: an address of
    // those alone has no generation 0.
    let without_zero = addresses_without_generation_0(std::path::Path::new(&data));
    assert!(without_zero > 0, "the corpus makes an address of late arrivals only");
    assert_eq!(stats["addresses_without_generation_0"].as_u64(), Some(without_zero), "{stats}");
    let refused = Command::new(env!("CARGO_BIN_EXE_vera"))
        .args(["serve", "--index-cache-mib", "0", "--data-dir", &data])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a zero cache budget is refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--index-cache-mib"), "and the error names the flag");
    for (flag, suffix) in [("--suffix-kib", "0"), ("--suffix-kib", "4097"), ("--later-suffix-kib", "0")] {
        let refused = Command::new(env!("CARGO_BIN_EXE_vera"))
            .args(["serve", flag, suffix, "--data-dir", &data])
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{flag} {suffix} is refused");
        assert!(String::from_utf8_lossy(&refused.stderr).contains(flag), "and the error names the flag");
    }

    // A port the system just handed out, not one derived from the pid: that one fell in
    // the ephemeral range and was once taken by a client socket, so serve could not bind.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let log_path = std::path::Path::new(&data).join("serve.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_vera"))
        .args(["serve", "--listen", &listen, "--data-dir", &data, "--index-cache-mib", "64", "--suffix-kib", "64"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(port, "/healthz").is_none() {
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(status) = server.try_wait().unwrap() {
            panic!("vera serve exited ({status}) before answering on {listen}: {}", log());
        }
        assert!(Instant::now() < deadline, "vera serve did not come up on {listen}: {}", log());
        std::thread::sleep(Duration::from_millis(100));
    }

    let (uid, created_at, payload) = first_row(&source);
    let path = format!("/v1/files/{uid}?created_at={}", created_at.replace('+', "%2B"));
    let (status, headers, body) = http_get(port, &path).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, payload, "byte-identical over HTTP");
    assert!(headers.contains(&format!("etag: \"{}\"", blake3::hash(&payload).to_hex())), "{headers}");
    let (status, _, body) = http_get(port, &format!("/v1/files/{uid}?created_at=2020-01-01T00:00:00Z")).unwrap();
    assert!(status.contains(" 404 "), "{status}: {}", String::from_utf8_lossy(&body));
    let (status, _, metrics) = http_get(port, "/metrics").unwrap();
    assert!(status.contains(" 200 "));
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("vera_reader_requests_total"), "metrics are served");
    assert!(metrics.contains("vera_reader_store_requests_total{op=\"get\"}"), "store calls are counted: {metrics}");
    let value = |name: &str| -> f64 {
        let line =
            metrics.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name}: {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("vera_reader_index_cache_total{result=\"miss\"}") >= 1.0, "the first read missed the cache");
    assert!(value("vera_reader_index_cache_files") >= 1.0, "the segment's index is cached");
    assert!(value("vera_reader_index_cache_bytes") > 0.0);

    // The READ is batched onto the bus within about a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while audit_depth(&data) == audits_before {
        assert!(Instant::now() < deadline, "no READ audit event reached the bus");
        std::thread::sleep(Duration::from_millis(200));
    }

    // `vera delete`: the file is gone for `vera get` at once and for the server within its
    // sidecar TTL (5 s by default); deleting again is a no-op; an unknown uid is an error.
    let delete = ["--request-id", "gdpr-7", "--operator", "dpo.test", "--data-dir", &data];
    let deleted = Instant::now();
    let out = vera(&[&["delete", &uid, "--created-at", &created_at][..], &delete[..]].concat());
    assert!(out.starts_with(&format!("tombstoned {uid} in ")), "{out}");
    let again = vera(&[&["delete", &uid, "--created-at", &created_at][..], &delete[..]].concat());
    assert!(again.starts_with(&format!("already tombstoned {uid}")), "{again}");
    let get = Command::new(env!("CARGO_BIN_EXE_vera"))
        .args(["get", &uid, "--created-at", &created_at, "--data-dir", &data])
        .output()
        .unwrap();
    assert!(!get.status.success());
    assert!(String::from_utf8_lossy(&get.stderr).contains("is gone: erased at"), "{get:?}");
    while !http_get(port, &path).unwrap().0.contains(" 410 ") {
        assert!(deleted.elapsed() < Duration::from_secs(10), "still served 10 s after the delete");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("vera delete → HTTP 410 in {} ms (sidecar TTL 5 s)", deleted.elapsed().as_millis());
    let unknown = Command::new(env!("CARGO_BIN_EXE_vera"))
        .args([&["delete", "no-such-file", "--created-at", &created_at][..], &delete[..]].concat())
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no file \"no-such-file\""), "{unknown:?}");

    let _ = server.kill();
    let _ = server.wait();
}
