//! `ember serve` as users run it: the binary on a free loopback port with the GPT-2
//! fixture (byte-level BPE), answering over plain HTTP/1.1 with the greedy text `ember
//! generate` prints, refusing bad flags with exit 2, and exiting 0 on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

fn gpt2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ember-hf/tests/fixtures/gpt2")
}

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .unwrap()
}

/// The server on the GPT-2 fixture, and the address it printed.
fn start(extra: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    start_on(&gpt2(), extra, env)
}

fn start_on(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
        .args(extra)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .unwrap();
        if let Some(rest) = line.strip_prefix("ember serve: listening on http://") {
            break rest.to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// One HTTP/1.1 exchange: the status and the body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, rest) = response.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // De-chunk: size line, data, CRLF.
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

fn terminate(mut child: Child) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "ember serve exited with {status} on SIGTERM"
    );
}

#[test]
fn serves_the_text_ember_generate_prints_and_stops_cleanly_on_sigterm() {
    let prompt = "Hello, my dog";
    let generated = ember(&[
        "generate",
        "--model",
        gpt2().to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
    ]);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let printed = String::from_utf8(generated.stdout).unwrap();
    let continuation = printed
        .trim_end_matches('\n')
        .strip_prefix(prompt)
        .unwrap()
        .to_string();
    let (child, addr) = start(
        &["--served-model-name", "gpt2-tiny"],
        &[("EMBER_API_KEY", "k")],
    );
    let request =
        json!({"model": "gpt2-tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0});
    let (status, _) = http(&addr, "POST", "/v1/completions", Some(&request), None);
    assert_eq!(status, 401, "EMBER_API_KEY is required");
    let (status, body) = http(&addr, "POST", "/v1/completions", Some(&request), Some("k"));
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["choices"][0]["text"], continuation.as_str());
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let (status, events) = http(&addr, "POST", "/v1/completions", Some(&streamed), Some("k"));
    assert_eq!(status, 200);
    let text: String = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            let chunk: Value = serde_json::from_str(d).unwrap();
            chunk["choices"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(text, continuation);
    let (status, health) = http(&addr, "GET", "/health", None, None);
    assert_eq!(status, 200, "{health}");
    let (status, metrics) = http(&addr, "GET", "/metrics", None, Some("k"));
    assert_eq!(status, 200);
    assert!(
        metrics.contains("vllm:generation_tokens_total{model_name=\"gpt2-tiny\"} 24"),
        "{metrics}"
    );
    terminate(child);
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let model = gpt2();
    let model = model.to_str().unwrap();
    for (args, needle) in [
        (vec!["--kv-cache-mb", "0.001"], "--kv-cache-mb"),
        (vec!["--kv-cache-mb=-5"], "--kv-cache-mb"),
        (vec!["--max-queued-requests", "0"], "--max-queued-requests"),
        (vec!["--host", "not an address"], "--host"),
        (vec!["--block-size", "0"], "--block-size"),
        (vec!["--max-num-seqs", "0"], "--max-num-seqs"),
        (vec!["--shutdown-timeout=-1"], "--shutdown-timeout"),
    ] {
        let mut all = vec!["serve", "--model", model, "--port", "0"];
        all.extend(args.iter().copied());
        let out = ember(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // A port already taken is a runtime failure (exit 1) that names the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = ember(&["serve", "--model", model, "--port", &port]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&port), "{stderr}");
}

/// `ember quantize` writes a directory `generate` and `serve` run as stored: the same
/// greedy ids as quantizing on the fly (`--decoder host-int4` / `host-int8`), served over
/// HTTP, refused by the commands that need f32 weights, replaced atomically.
#[test]
fn quantized_models_are_written_once_and_run_as_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let model = gpt2();
    let model = model.to_str().unwrap();
    for (bits, decoder) in [("4", "host-int4"), ("8", "host-int8")] {
        let out = tmp.path().join(format!("q{bits}"));
        let out_s = out.to_str().unwrap();
        let made = ember(&["quantize", "--model", model, "--bits", bits, "--out", out_s]);
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        assert!(out.join("host_decoder.safetensors").is_file());
        assert!(out.join("tokenizer.json").is_file());
        let ids = |m: &str, extra: &[&str]| {
            let mut args = vec![
                "generate",
                "--model",
                m,
                "--prompt",
                "Hello there",
                "--temperature",
                "0",
                "--max-new-tokens",
                "16",
                "--print-ids",
            ];
            args.extend(extra);
            let out = ember(&args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        // The same weights quantized in the library, decoded alone on the host.
        let hf = ember_hf::HfModel::open(&gpt2()).unwrap();
        let f32_model = hf
            .load_model::<burn::backend::Flex>(&Default::default())
            .unwrap();
        let weights = if bits == "4" {
            ember_infer::HostWeights::Int4
        } else {
            ember_infer::HostWeights::Int8
        };
        let host = ember_infer::HostDecoder::new(&f32_model, weights).unwrap();
        let prompt = hf
            .tokenizer
            .as_ref()
            .unwrap()
            .encode_with_special("Hello there")
            .unwrap();
        let mut state = host.new_state();
        let mut logits = host.prefill(&mut state, &prompt).to_vec();
        let mut want = Vec::new();
        for _ in 0..16 {
            let t = ember_infer::argmax(&logits);
            want.push(t.to_string());
            if hf.generation.eos_token_ids.contains(&t) {
                break;
            }
            logits = host.step(&mut state, t).to_vec();
        }
        assert_eq!(
            ids(out_s, &[]),
            format!("{}\n", want.join(",")),
            "{bits} bits"
        );
        // Quantizing on the fly runs the same weights (its prompt goes through burn in f32).
        assert!(!ids(model, &["--decoder", decoder]).is_empty());
        let info = ember(&["info", "--model", out_s]);
        assert!(String::from_utf8_lossy(&info.stdout).contains(&format!("weights: int{bits}")));
        // Quantizing again replaces the earlier output.
        let again = ember(&["quantize", "--model", model, "--bits", bits, "--out", out_s]);
        assert!(again.status.success());
    }
    let q4 = tmp.path().join("q4");
    let (child, addr) = start_on(&q4, &["--served-model-name", "q4"], &[]);
    let request =
        json!({"model": "q4", "prompt": "Hello there", "max_tokens": 8, "temperature": 0});
    let (status, body) = http(&addr, "POST", "/v1/completions", Some(&request), None);
    assert_eq!(status, 200, "{body}");
    terminate(child);
    let q4 = q4.to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "quantize",
                "--model",
                model,
                "--bits",
                "3",
                "--out",
                "/tmp/never",
            ],
            "--bits",
        ),
        (
            vec![
                "quantize",
                "--model",
                q4,
                "--bits",
                "4",
                "--out",
                "/tmp/never",
            ],
            "already quantized",
        ),
        (
            vec![
                "logits",
                "--model",
                q4,
                "--ids",
                "1,2",
                "--out",
                "/tmp/never.safetensors",
            ],
            "ember generate",
        ),
        (
            vec![
                "generate",
                "--model",
                q4,
                "--prompt",
                "x",
                "--decoder",
                "burn",
            ],
            "--decoder",
        ),
        (
            vec!["serve", "--model", q4, "--weights", "int8"],
            "--weights",
        ),
    ] {
        let out = ember(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // A directory of something else is not replaced without --force.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep me").unwrap();
    let out = ember(&[
        "quantize",
        "--model",
        model,
        "--bits",
        "4",
        "--out",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(other.join("notes.txt").is_file());
}
