//! Bounded, deterministic fuzzing of the readers that take untrusted files: the
//! safetensors header parser and tensor reads ([`WeightFiles`]), sharded-weight indexes,
//! and `config.json` ([`read_config`] / [`parse_config`]).
//!
//! Each target mutates valid inputs (built here or taken from the fixtures) with a seeded
//! generator and feeds them to the public API inside `catch_unwind`: any panic fails the
//! test and prints the input. A target stops after its iteration count or its time budget,
//! whichever comes first. Every input must give `Ok` or an error naming the file; no read
//! may return a different number of values than its shape holds; no allocation may exceed
//! [`ALLOC_LIMIT`] (a global allocator refuses it, which aborts the test binary after
//! printing where the input is).
//!
//! Environment: `EMBER_FUZZ_SEED` (default fixed), `EMBER_FUZZ_ITERS` (multiplies every
//! target's iteration count, default 1), `EMBER_FUZZ_SECS` (each target's time budget,
//! default 8).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::{Path, PathBuf};

use ember_hf::config::to_config_json;
use ember_hf::safetensors_io::{INDEX_FILE, NamedTensor, WEIGHTS_FILE, write_safetensors};
use ember_hf::{CONFIG_FILE, WeightDType, WeightFiles, export_arch, parse_config, read_config};
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------
// Allocation guard: inputs here are at most a few MiB, so no read may ask for more than
// this. An untrusted number driving an allocation shows up as a refused request.

const ALLOC_LIMIT: usize = 64 << 20;

struct Guard;

unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            refuse(layout.size());
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            refuse(layout.size());
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_LIMIT {
            refuse(new_size);
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GUARD: Guard = Guard;

/// Says (without allocating) that an allocation was refused and where the input is; the
/// caller's null pointer then aborts the process.
fn refuse(size: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = size;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(b"\nfuzz: refused an allocation of ");
    let _ = err.write_all(&digits[i..]);
    let _ = err.write_all(b" bytes; the input being read is kept under ");
    let _ = err.write_all(FUZZ_ROOT.as_bytes());
    let _ = err.write_all(b"\n");
}

const FUZZ_ROOT: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/ember-hf-fuzz");

// ---------------------------------------------------------------------------------------
// The generator and the budget.

#[path = "../../../tools/testing/fuzz_harness.rs"]
mod fuzz_harness;
use fuzz_harness::{Rng, fuzz_loop, no_panic};

/// A fresh working directory for one target, under [`FUZZ_ROOT`].
fn work_dir(target: &str) -> PathBuf {
    let dir = Path::new(FUZZ_ROOT).join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The input as text for a failure message: printable ASCII as is, the rest escaped,
/// at most 8 KiB of it.
fn escaped(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(8 << 10)];
    let mut out: String = shown.escape_ascii().to_string();
    if shown.len() < bytes.len() {
        out.push_str(&format!("... ({} more bytes)", bytes.len() - shown.len()));
    }
    out
}

/// Fails the test with the input that made `what` panic; the input stays on disk.
fn report(target: &str, iteration: usize, what: &str, message: &str, inputs: &[(&str, &[u8])]) {
    let mut text = format!(
        "fuzz {target}, input {iteration}: {what} panicked: {message}\n(inputs kept under {FUZZ_ROOT}/{target}; rerun with the same EMBER_FUZZ_SEED to reproduce)\n"
    );
    for (name, bytes) in inputs {
        text.push_str(&format!(
            "--- {name} ({} bytes):\n{}\n",
            bytes.len(),
            escaped(bytes)
        ));
    }
    panic!("{text}");
}

// ---------------------------------------------------------------------------------------
// Safetensors inputs.

/// One tensor for [`safetensors_bytes`]: name, dtype name, shape, data bytes.
type RawTensor = (&'static str, &'static str, Vec<usize>, Vec<u8>);

/// A safetensors file: the 8-byte header length, the JSON header (padded to 8 bytes with
/// spaces, as the format's writers do) and the data, tensors back to back.
fn safetensors_bytes(tensors: &[RawTensor]) -> Vec<u8> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    pack(Value::Object(header).to_string().into_bytes(), &data)
}

fn pack(mut header: Vec<u8>, data: &[u8]) -> Vec<u8> {
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend_from_slice(data);
    out
}

/// `(header length, header bytes, data bytes)` when the length field is in range.
fn split(file: &[u8]) -> Option<(usize, &[u8], &[u8])> {
    let n = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(n).ok()?)?;
    Some((n as usize, file.get(8..end)?, &file[end..]))
}

fn f32_bytes(n: usize, scale: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (i as f32 * scale - 1.0).to_le_bytes())
        .collect()
}

fn half_bytes(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| half::f16::from_f32(i as f32 * 0.25).to_le_bytes())
        .collect()
}

/// Valid files to start from, each with the values its tensors must read back as.
fn safetensors_bases(dir: &Path) -> Vec<Vec<u8>> {
    let mixed = safetensors_bytes(&[
        ("a.weight", "F32", vec![3, 4], f32_bytes(12, 0.5)),
        ("b.bias", "F16", vec![5], half_bytes(5)),
        ("c", "BF16", vec![2, 3], half_bytes(6)),
        (
            "pos_ids",
            "I64",
            vec![2],
            vec![1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
        ),
        ("scalar", "F32", vec![], f32_bytes(1, 1.0)),
        ("empty", "F32", vec![0, 3], vec![]),
        ("mask", "BOOL", vec![4], vec![1, 0, 1, 1]),
    ]);
    let one = safetensors_bytes(&[("w", "F32", vec![2, 2], f32_bytes(4, 1.0))]);
    // Rows of 600 KB: the reader goes through its chunk loop one row at a time.
    let big = safetensors_bytes(&[
        ("big", "F32", vec![3, 150_000], f32_bytes(450_000, 1e-3)),
        ("tail", "F16", vec![7, 1], half_bytes(7)),
    ]);
    // What Ember's own writer produces.
    let written = dir.join("written.safetensors");
    let tensors = [
        NamedTensor {
            name: "model.embed_tokens.weight".into(),
            shape: vec![6, 4],
            values: (0..24).map(|i| i as f32).collect(),
        },
        NamedTensor {
            name: "model.norm.weight".into(),
            shape: vec![4],
            values: vec![1.0; 4],
        },
    ];
    write_safetensors(&written, &tensors, WeightDType::Bf16).unwrap();
    let written = std::fs::read(&written).unwrap();
    vec![mixed, one, big, written]
}

/// `target[key] = value` where `target` is an object (or null, which becomes one);
/// other values are left alone (serde_json's `IndexMut` would panic on them).
fn set(target: &mut Value, key: &str, value: Value) {
    if target.is_null() {
        *target = Value::Object(Map::new());
    }
    if let Some(map) = target.as_object_mut() {
        map.insert(key.to_string(), value);
    }
}

/// Numbers worth trying wherever the header holds one.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "8",
    "12",
    "-1",
    "-0",
    "0.5",
    "1e3",
    "1e400",
    "4294967295",
    "4294967296",
    "4611686018427387904",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "NaN",
    "null",
    "\"3\"",
    "[]",
    "{}",
];

const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "F4", "F6_E2M3", "C64",
    "f32", "", "F32 ", "Q4_K", "\u{0}",
];

/// Mutates the header as JSON: offsets, shapes, dtypes, entries.
fn mutate_header_json(rng: &mut Rng, header: &mut Value) {
    let Some(map) = header.as_object_mut() else {
        return;
    };
    let names: Vec<String> = map.keys().cloned().collect();
    if names.is_empty() {
        return;
    }
    let name = rng.pick(&names).clone();
    let other = rng.pick(&names).clone();
    let other_entry = map[&other].clone();
    let entry = map.get_mut(&name).unwrap();
    let huge = [
        json!(0),
        json!(1),
        json!(u32::MAX),
        json!(1u64 << 32),
        json!(1u64 << 62),
        json!(1u64 << 63),
        json!(u64::MAX),
        json!(u64::MAX - 7),
        json!(-1),
        json!(1.5),
        json!("4"),
        Value::Null,
    ];
    match rng.below(14) {
        0 => set(entry, "dtype", json!(rng.pick(DTYPES))),
        1 => {
            let dims: Vec<Value> = (0..rng.below(5))
                .map(|_| {
                    if rng.chance(50) {
                        json!(rng.below(6))
                    } else {
                        rng.pick(&huge).clone()
                    }
                })
                .collect();
            set(entry, "shape", Value::Array(dims));
        }
        2 => {
            // Products that overflow 64 bits, or land on a small number when they wrap.
            let shapes = [
                json!([1u64 << 32, 1u64 << 32]),
                json!([1u64 << 62, 4]),
                json!([1u64 << 62, 8]),
                json!([u64::MAX, u64::MAX, 2]),
                json!([usize::MAX, 0]),
                json!([0, usize::MAX]),
                json!([3, 0]),
                json!([5, 0]),
                json!([0, 5]),
                json!(vec![1; 40]),
                json!(vec![2; 70]),
            ];
            set(entry, "shape", rng.pick(&shapes).clone());
        }
        3 => {
            if let Some([a, b]) = entry["data_offsets"].as_array().map(|v| v.as_slice()) {
                set(entry, "data_offsets", json!([b, a]));
            }
        }
        4 => {
            let i = rng.below(2);
            if let Some(slot) = entry.get_mut("data_offsets").and_then(|v| v.get_mut(i)) {
                *slot = rng.pick(&huge).clone();
            }
        }
        5 => {
            let shift = rng.below(17) as i64 - 8;
            if let Some(offsets) = entry.get_mut("data_offsets").and_then(Value::as_array_mut) {
                for v in offsets {
                    if let Some(n) = v.as_i64() {
                        *v = json!(n.saturating_add(shift));
                    }
                }
            }
        }
        6 => set(entry, "data_offsets", other_entry["data_offsets"].clone()),
        7 => {
            let offsets = [
                json!([0, 0]),
                json!([0]),
                json!([0, 1, 2]),
                json!([u64::MAX, u64::MAX]),
                json!([u64::MAX - 1, u64::MAX]),
                json!([0, u64::MAX]),
                json!({"0": 0}),
                json!("0,4"),
            ];
            set(entry, "data_offsets", rng.pick(&offsets).clone());
        }
        8 => {
            if let Some(obj) = entry.as_object_mut() {
                let key = rng.pick(&["dtype", "shape", "data_offsets"]).to_string();
                obj.remove(&key);
            }
        }
        9 => {
            let junk = [
                Value::Null,
                json!(1),
                json!("F32"),
                json!([]),
                json!({}),
                json!({"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": true}),
            ];
            *entry = rng.pick(&junk).clone();
        }
        10 => {
            // The same bytes under a second name: overlapping tensors.
            let copy = entry.clone();
            map.insert(format!("{name}.copy"), copy);
        }
        11 => {
            map.insert("__metadata__".into(), rng.pick(&huge).clone());
        }
        12 => {
            let value = map.remove(&name).unwrap();
            let renamed = rng.pick(&["", "__metadata__", "a/b", "\u{1F600}", "x\u{0}y"]);
            map.insert(renamed.to_string(), value);
        }
        _ => set(entry, "dtype", other_entry["dtype"].clone()),
    }
}

/// Replaces one run of digits in the header text with another number or token.
fn mutate_number_text(rng: &mut Rng, text: &mut Vec<u8>) {
    let runs: Vec<(usize, usize)> = {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < text.len() {
            if text[i].is_ascii_digit() {
                let start = i;
                while i < text.len() && text[i].is_ascii_digit() {
                    i += 1;
                }
                runs.push((start, i));
            } else {
                i += 1;
            }
        }
        runs
    };
    if runs.is_empty() {
        return;
    }
    let (start, end) = *rng.pick(&runs);
    let replacement = rng.pick(NUMBERS).as_bytes();
    text.splice(start..end, replacement.iter().copied());
}

/// Inserts, deletes or overwrites a few bytes of the header text.
fn splice_text(rng: &mut Rng, text: &mut Vec<u8>) {
    const PIECES: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b",",
        b":",
        b"\\",
        b"\\u",
        b"\\ud800",
        b"\xff",
        b"\xc3",
        b"\xed\xa0\x80",
        b"\0",
        b"null",
        b"-",
        b"e999",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ];
    rng.splice(text, PIECES, b"{}[]\",:0123456789-eE.\\ \xff\x00", 8);
}

/// One mutated safetensors file from `base`.
fn mutate_safetensors(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut file = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(10) {
            // Header-level edits, the length field kept consistent.
            0..=2 => {
                if let Some((_, header, data)) = split(&file)
                    && let Ok(mut value) = serde_json::from_slice::<Value>(header)
                {
                    mutate_header_json(rng, &mut value);
                    file = pack(value.to_string().into_bytes(), data);
                }
            }
            3 => {
                if let Some((_, header, data)) = split(&file) {
                    let (mut header, data) = (header.to_vec(), data.to_vec());
                    mutate_number_text(rng, &mut header);
                    file = pack(header, &data);
                }
            }
            4 => {
                if let Some((_, header, data)) = split(&file) {
                    let (mut header, data) = (header.to_vec(), data.to_vec());
                    splice_text(rng, &mut header);
                    // Sometimes without the spaces that keep the length a multiple of 8.
                    if rng.chance(50) {
                        let mut out = (header.len() as u64).to_le_bytes().to_vec();
                        out.extend(header);
                        out.extend(data);
                        file = out;
                    } else {
                        file = pack(header, &data);
                    }
                }
            }
            // The length field itself.
            5 => {
                let current = split(&file).map_or(0, |(n, _, _)| n as u64);
                let len = file.len() as u64;
                let values = [
                    0,
                    1,
                    7,
                    8,
                    current.wrapping_sub(1),
                    current + 1,
                    current + 8,
                    len.saturating_sub(8),
                    len.saturating_sub(7),
                    len,
                    100 << 20,
                    (100 << 20) + 1,
                    1 << 32,
                    1 << 63,
                    u64::MAX,
                    u64::MAX - 7,
                    rng.next(),
                ];
                let value = *rng.pick(&values);
                if file.len() < 8 {
                    file.resize(8, 0);
                }
                file[..8].copy_from_slice(&value.to_le_bytes());
            }
            // Bytes anywhere (mostly in the first KiB, where the header is).
            6 => {
                for _ in 0..1 + rng.below(8) {
                    let span = if rng.chance(80) {
                        file.len().min(1024)
                    } else {
                        file.len()
                    };
                    if span > 0 {
                        let at = rng.below(span);
                        file[at] ^= 1 << rng.below(8);
                    }
                }
            }
            7 => {
                let keep = rng.below(file.len() + 1);
                file.truncate(keep);
            }
            8 => {
                for _ in 0..rng.below(64) {
                    file.push(rng.next() as u8);
                }
            }
            _ => {
                // Garbage, sometimes behind a plausible length.
                let n = rng.below(96);
                file = (0..n).map(|_| rng.next() as u8).collect();
                if rng.chance(50) && n >= 8 {
                    file[..8].copy_from_slice(&(rng.below(n) as u64).to_le_bytes());
                }
            }
        }
    }
    file
}

/// Opens `dir`'s weights and reads every tensor both ways, checking what comes back.
/// Panics (caught by the caller) when a result breaks the reader's contract.
fn exercise_weights(dir: &Path) {
    let weights = match WeightFiles::open(dir) {
        Ok(w) => w,
        Err(e) => {
            assert!(
                e.path.starts_with(dir),
                "the error names {} instead of a file in {}",
                e.path.display(),
                dir.display()
            );
            assert!(!e.message.is_empty());
            return;
        }
    };
    let _ = weights.dtype();
    let names: Vec<String> = weights.names().map(str::to_string).collect();
    for name in names.iter().chain([&"not.a.tensor".to_string()]) {
        let shape = weights.shape(name).map(<[usize]>::to_vec);
        for transpose in [false, true] {
            match weights.read(name, transpose) {
                Ok(values) => {
                    let shape = shape.as_ref().expect("read a tensor that has no shape");
                    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                    assert_eq!(
                        Some(values.len()),
                        numel,
                        "`{name}` of shape {shape:?} read as {} values",
                        values.len()
                    );
                    assert!(!transpose || shape.len() == 2);
                }
                Err(e) => assert!(
                    e.message.contains(&format!("`{name}`")),
                    "the error does not name tensor `{name}`: {e}"
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The targets.

#[test]
fn harness_reports_panics() {
    // The checks below only mean something if a panic inside them fails the test.
    let caught = no_panic(|| {
        let v: Vec<u8> = Vec::new();
        v[usize::from(v.is_empty())]
    });
    assert!(caught.is_err_and(|m| m.contains("index out of bounds")));
    let reported = no_panic(|| report("self-test", 0, "read", "boom", &[("in", b"\x00\xffab")]));
    let message = reported.unwrap_err();
    assert!(message.contains("read panicked: boom"), "{message}");
    assert!(message.contains(r"\x00\xffab"), "{message}");
}

#[test]
fn valid_safetensors_read_back() {
    let dir = work_dir("valid");
    let bases = safetensors_bases(&dir);
    let path = dir.join(WEIGHTS_FILE);
    for base in &bases {
        std::fs::write(&path, base).unwrap();
        let weights = WeightFiles::open(&dir).unwrap();
        for name in weights.names() {
            if name == "pos_ids" || name == "mask" {
                let err = weights.read(name, false).unwrap_err();
                assert!(err.message.contains(name), "{err}");
                continue;
            }
            let values = weights.read(name, false).unwrap();
            let numel: usize = weights.shape(name).unwrap().iter().product();
            assert_eq!(values.len(), numel, "{name}");
        }
    }
    std::fs::write(&path, &bases[0]).unwrap();
    let weights = WeightFiles::open(&dir).unwrap();
    let a = weights.read("a.weight", false).unwrap();
    assert_eq!(a[..3], [-1.0, -0.5, 0.0]);
    let at = weights.read("a.weight", true).unwrap();
    assert_eq!(at[1], a[4], "transposed [3, 4] -> [4, 3]");
    assert_eq!(
        weights.read("b.bias", false).unwrap(),
        [0.0, 0.25, 0.5, 0.75, 1.0]
    );
    assert_eq!(weights.read("scalar", false).unwrap(), [-1.0]);
    assert!(weights.read("empty", false).unwrap().is_empty());
    assert!(weights.read("empty", true).unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn safetensors_headers_and_reads_never_panic() {
    let dir = work_dir("safetensors");
    let bases = safetensors_bases(&dir);
    let path = dir.join(WEIGHTS_FILE);
    let mut outcomes = [0usize; 2];
    fuzz_loop("safetensors", 12_000, |rng, i| {
        // The 1.8 MB base is slow to write: one input in twenty.
        let base = if rng.chance(5) {
            &bases[2]
        } else {
            &bases[*rng.pick(&[0, 0, 1, 3])]
        };
        let input = mutate_safetensors(rng, base);
        std::fs::write(&path, &input).unwrap();
        match no_panic(|| {
            exercise_weights(&dir);
            WeightFiles::open(&dir).is_ok()
        }) {
            Ok(ok) => outcomes[usize::from(ok)] += 1,
            Err(m) => report(
                "safetensors",
                i,
                "WeightFiles",
                &m,
                &[(WEIGHTS_FILE, &input)],
            ),
        }
    });
    eprintln!(
        "fuzz safetensors: {} inputs refused, {} opened",
        outcomes[0], outcomes[1]
    );
    // The mutations should neither all fail at the first check nor all pass.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

const SHARD_1: &str = "model-00001-of-00002.safetensors";
const SHARD_2: &str = "model-00002-of-00002.safetensors";

#[test]
fn sharded_indexes_never_panic() {
    let dir = work_dir("index");
    std::fs::create_dir_all(dir.join("subdir")).unwrap();
    let shard_1 = safetensors_bytes(&[
        (
            "model.embed_tokens.weight",
            "F32",
            vec![4, 2],
            f32_bytes(8, 1.0),
        ),
        ("model.norm.weight", "BF16", vec![2], half_bytes(2)),
    ]);
    let shard_2 = safetensors_bytes(&[("lm_head.weight", "F16", vec![4, 2], half_bytes(8))]);
    let index = json!({
        "metadata": {"total_size": 52},
        "weight_map": {
            "model.embed_tokens.weight": SHARD_1,
            "model.norm.weight": SHARD_1,
            "lm_head.weight": SHARD_2,
        }
    });
    let shard_names = [
        SHARD_1,
        SHARD_2,
        "",
        ".",
        "..",
        "/",
        "subdir",
        "subdir/x.safetensors",
        "../index/model-00001-of-00002.safetensors",
        "./model-00001-of-00002.safetensors",
        "/etc/passwd",
        "C:\\weights.safetensors",
        "x\u{0}y",
        "missing.safetensors",
        INDEX_FILE,
    ];
    fuzz_loop("index", 4_000, |rng, i| {
        let mut value = index.clone();
        let mut shards = [shard_1.clone(), shard_2.clone()];
        for _ in 0..1 + rng.below(3) {
            match rng.below(6) {
                0 | 1 => {
                    let key = rng
                        .pick(&[
                            "model.embed_tokens.weight",
                            "model.norm.weight",
                            "lm_head.weight",
                            "extra",
                        ])
                        .to_string();
                    if let Some(map) = value.get_mut("weight_map") {
                        set(map, &key, json!(rng.pick(&shard_names)));
                    }
                }
                2 => {
                    let junk = [
                        Value::Null,
                        json!(1),
                        json!([SHARD_1]),
                        json!({"a": 1}),
                        json!("x"),
                    ];
                    let slot = rng.pick(&["weight_map", "metadata"]).to_string();
                    set(&mut value, &slot, rng.pick(&junk).clone());
                }
                3 => {
                    let s = rng.below(2);
                    shards[s] = mutate_safetensors(rng, &shards[s]);
                }
                _ => {
                    let key = rng
                        .pick(&["model.embed_tokens.weight", "lm_head.weight"])
                        .to_string();
                    if let Some(map) = value["weight_map"].as_object_mut() {
                        map.remove(&key);
                    }
                }
            }
        }
        let mut text = value.to_string().into_bytes();
        if rng.chance(15) {
            splice_text(rng, &mut text);
        }
        std::fs::write(dir.join(INDEX_FILE), &text).unwrap();
        std::fs::write(dir.join(SHARD_1), &shards[0]).unwrap();
        std::fs::write(dir.join(SHARD_2), &shards[1]).unwrap();
        if let Err(m) = no_panic(|| exercise_weights(&dir)) {
            report(
                "index",
                i,
                "WeightFiles",
                &m,
                &[
                    (INDEX_FILE, &text),
                    (SHARD_1, &shards[0]),
                    (SHARD_2, &shards[1]),
                ],
            );
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// config.json.

fn fixture_configs() -> Vec<Value> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut configs: Vec<Value> = std::fs::read_dir(&fixtures)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path().join(CONFIG_FILE);
            let text = std::fs::read_to_string(path).ok()?;
            Some(serde_json::from_str(&text).unwrap())
        })
        .collect();
    configs.sort_by_key(|v| v.to_string());
    assert!(configs.len() >= 5, "fixture configs: {}", configs.len());
    // The transformers 5 spelling, and Qwen2 with its window on.
    configs.push(json!({
        "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "head_dim": 8,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64},
        "layer_types": ["full_attention", "full_attention"],
        "bos_token_id": 1, "eos_token_id": [2, 3]
    }));
    configs.push(json!({
        "model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
        "max_position_embeddings": 128, "use_sliding_window": true, "max_window_layers": 0,
        "sliding_window": 16, "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "partial_rotary_factor": 0.5, "tie_word_embeddings": true
    }));
    configs
}

/// Keys a mutation may add (or replace), across the architectures.
const CONFIG_KEYS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "hidden_act",
    "tie_word_embeddings",
    "mlp_bias",
    "attention_bias",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "partial_rotary_factor",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "num_local_experts",
    "num_experts_per_tok",
    "router_aux_loss_coef",
    "bos_token_id",
    "eos_token_id",
    "n_embd",
    "n_layer",
    "n_head",
    "n_positions",
    "n_inner",
    "layer_norm_epsilon",
    "activation_function",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "add_cross_attention",
];

const ROPE_KEYS: &[&str] = &[
    "type",
    "rope_type",
    "factor",
    "rope_theta",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "partial_rotary_factor",
];

fn config_values(rng: &mut Rng) -> Value {
    let values = [
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(2),
        json!(3),
        json!(4),
        json!(8),
        json!(64),
        json!(-1),
        json!(i64::MIN),
        json!(u32::MAX),
        json!(1u64 << 32),
        json!(1u64 << 40),
        json!(1u64 << 53),
        json!(1u64 << 62),
        json!(u64::MAX),
        json!(0.5),
        json!(-0.0),
        json!(1e-300),
        json!(5e-324),
        json!(1e300),
        json!(-1e300),
        json!(f64::MAX),
        json!(""),
        json!("NaN"),
        json!("Infinity"),
        json!("1e999"),
        json!("llama"),
        json!("gpt2"),
        json!("mistral"),
        json!("qwen2"),
        json!("mixtral"),
        json!("bert"),
        json!("silu"),
        json!("gelu"),
        json!("gelu_new"),
        json!("default"),
        json!("linear"),
        json!("dynamic"),
        json!("llama3"),
        json!("yarn"),
        json!("sliding_attention"),
        json!("full_attention"),
        json!([]),
        json!([1, 2]),
        json!([-1]),
        json!([u64::MAX]),
        json!(["sliding_attention", "sliding_attention"]),
        json!(["full_attention", "sliding_attention"]),
        json!([[[[]]]]),
        json!({}),
        json!({"type": "linear", "factor": 0.0}),
        json!({"type": "dynamic", "factor": 1e300}),
        json!({"rope_type": "dynamic", "factor": 1e18}),
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
            "high_freq_factor": 1.0, "original_max_position_embeddings": 0}),
        json!({"rope_type": "llama3"}),
        json!({"rope_type": "yarn", "factor": 4.0}),
        json!({"type": 3}),
    ];
    rng.pick(&values).clone()
}

fn mutate_config(rng: &mut Rng, config: &mut Value) {
    match rng.below(8) {
        0..=2 => {
            let keys: Vec<String> = config
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            if !keys.is_empty() {
                let key = rng.pick(&keys).clone();
                set(config, &key, config_values(rng));
            }
        }
        3 => {
            let key = rng.pick(CONFIG_KEYS).to_string();
            set(config, &key, config_values(rng));
        }
        4 => {
            let key = rng.pick(CONFIG_KEYS).to_string();
            if let Some(map) = config.as_object_mut() {
                map.remove(&key);
            }
        }
        5 => {
            // Inside the RoPE parameters.
            let outer = rng.pick(&["rope_scaling", "rope_parameters"]).to_string();
            if !config[&outer].is_object() {
                set(
                    config,
                    &outer,
                    json!({"rope_type": "linear", "factor": 2.0}),
                );
            }
            let key = rng.pick(ROPE_KEYS).to_string();
            if let Some(inner) = config.get_mut(&outer) {
                set(inner, &key, config_values(rng));
            }
        }
        6 => {
            // Consistent-looking but hostile sizes.
            let (heads, kv, hidden) = *rng.pick(&[
                (0usize, 0usize, 0usize),
                (3, 2, 64),
                (4, 3, 64),
                (5, 5, 64),
                (1, 1, 1),
                (1, 1, usize::MAX),
                (1 << 32, 1 << 32, 1 << 32),
                (2, 1, 6),
            ]);
            set(config, "num_attention_heads", json!(heads));
            set(config, "num_key_value_heads", json!(kv));
            set(config, "hidden_size", json!(hidden));
            set(config, "n_head", json!(heads));
            set(config, "n_embd", json!(hidden));
            if rng.chance(50) {
                set(config, "head_dim", config_values(rng));
            }
        }
        _ => {
            *config = rng
                .pick(&[json!([]), json!(null), json!("llama"), json!(3), json!({})])
                .clone();
        }
    }
}

/// Parses `config`, and when it is accepted, exports it back and parses that again.
fn exercise_config(config: &Value) {
    let path = Path::new("fuzz/config.json");
    let Ok(parsed) = parse_config(config, path) else {
        return;
    };
    let model = &parsed.model;
    model.validate().expect("an accepted config validates");
    let _ = model.num_params();
    let _ = model.head_dim();
    let Ok(arch) = export_arch(model) else {
        return;
    };
    let exported = to_config_json(
        arch,
        model,
        parsed.bos_token_id,
        &parsed.eos_token_ids,
        "float32",
    );
    let again = parse_config(&exported, path)
        .unwrap_or_else(|e| panic!("an exported config does not import again: {e}\n{exported}"));
    assert_eq!(
        again.model, parsed.model,
        "export/import changed the model: {exported}"
    );
}

#[test]
fn config_json_never_panics() {
    let dir = work_dir("config");
    let bases = fixture_configs();
    for base in &bases {
        parse_config(base, Path::new("config.json"))
            .unwrap_or_else(|e| panic!("a base config is refused: {e}\n{base}"));
    }
    let mut accepted = 0;
    fuzz_loop("config", 20_000, |rng, i| {
        let mut config = rng.pick(&bases).clone();
        for _ in 0..1 + rng.below(4) {
            mutate_config(rng, &mut config);
        }
        let mut text = config.to_string().into_bytes();
        // Through the file reader: numbers JSON values cannot hold, broken syntax, bytes
        // that are not UTF-8.
        let textual = rng.chance(30);
        if textual {
            for _ in 0..1 + rng.below(3) {
                if rng.chance(50) {
                    mutate_number_text(rng, &mut text);
                } else {
                    splice_text(rng, &mut text);
                }
            }
        }
        let result = no_panic(|| {
            if textual {
                std::fs::write(dir.join(CONFIG_FILE), &text).unwrap();
                match read_config(&dir) {
                    Ok(_) => {
                        exercise_config(&serde_json::from_slice(&text).unwrap());
                        true
                    }
                    Err(e) => {
                        assert_eq!(e.path, dir.join(CONFIG_FILE));
                        false
                    }
                }
            } else {
                exercise_config(&config);
                parse_config(&config, Path::new("config.json")).is_ok()
            }
        });
        match result {
            Ok(ok) => accepted += usize::from(ok),
            Err(m) => report("config", i, "parse_config", &m, &[(CONFIG_FILE, &text)]),
        }
    });
    eprintln!("fuzz config: {accepted} inputs accepted");
    assert!(accepted > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// Inputs the fuzzers found or that the checks exist for, kept as plain cases.

/// Writes `file` as `dir`'s weights and returns what opening and reading every tensor gave.
fn open_and_read(dir: &Path, file: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    std::fs::write(dir.join(WEIGHTS_FILE), file).unwrap();
    let weights = WeightFiles::open(dir).map_err(|e| e.to_string())?;
    let names: Vec<String> = weights.names().map(str::to_string).collect();
    names
        .iter()
        .map(|n| weights.read(n, false).map_err(|e| e.to_string()))
        .collect()
}

#[test]
fn hostile_safetensors_are_refused_naming_the_tensor() {
    let dir = work_dir("hostile-safetensors");
    let one = |dtype: &'static str, shape: Vec<usize>, bytes: Vec<u8>| {
        safetensors_bytes(&[("w", dtype, shape, bytes)])
    };
    let with_header = |header: Value, data: &[u8]| pack(header.to_string().into_bytes(), data);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        // 3 * 2 * 2^62 * 2 wraps to 0 in 64 bits: it used to pass as an empty tensor and
        // panic when read.
        (
            "wrapping shape",
            with_header(
                json!({"w": {"dtype": "F32", "shape": [3, 2, 1u64 << 62, 2], "data_offsets": [0, 0]}}),
                &[0; 16],
            ),
            &["`w`", "shape [3, 2, 4611686018427387904, 2]"],
        ),
        (
            "overflowing shape",
            with_header(
                json!({"w": {"dtype": "I64", "shape": [u64::MAX, u64::MAX, 2], "data_offsets": [0, 8]}}),
                &[0; 8],
            ),
            &["`w`", "more elements"],
        ),
        (
            "zero columns over nonzero bytes",
            with_header(
                json!({"w": {"dtype": "F32", "shape": [5, 0], "data_offsets": [0, 0]}, "x": {"dtype": "F32", "shape": [5], "data_offsets": [0, 20]}}),
                &[0; 20],
            ),
            &[],
        ),
        (
            "reversed offsets",
            with_header(
                json!({"w": {"dtype": "F32", "shape": [], "data_offsets": [4, 0]}}),
                &[0; 8],
            ),
            &["`w`", "reversed"],
        ),
        (
            "past the end",
            with_header(
                json!({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}),
                &[0; 12],
            ),
            &["`w`", "truncated", "12 data bytes"],
        ),
        (
            "byte length not the shape's",
            one("BF16", vec![3], vec![0; 4]),
            &["`w`", "needs 6"],
        ),
        (
            "overlapping tensors",
            with_header(
                json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}),
                &[0; 12],
            ),
            &["`a`", "`b`", "overlap"],
        ),
        (
            "unreadable dtype",
            one("I64", vec![1], vec![0; 8]),
            &["`w`", "I64"],
        ),
        (
            "header longer than the file",
            {
                let mut f = one("F32", vec![1], vec![0; 4]);
                let len = f.len() as u64;
                f[..8].copy_from_slice(&len.to_le_bytes());
                f
            },
            &["truncated", "header claims"],
        ),
        (
            "absurd header length",
            {
                let mut f = one("F32", vec![1], vec![0; 4]);
                f[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                f
            },
            &["18446744073709551615", "limit"],
        ),
        (
            "header not UTF-8",
            pack(b"{\"w\xff\": 1}".to_vec(), &[]),
            &["UTF-8"],
        ),
        (
            "header not an object",
            pack(b"[1, 2]".to_vec(), &[]),
            &["malformed safetensors header"],
        ),
    ];
    for (what, file, needles) in cases {
        let result = no_panic(|| open_and_read(&dir, &file))
            .unwrap_or_else(|m| panic!("{what}: panicked: {m}"));
        match result {
            Ok(values) if needles.is_empty() => {
                assert!(
                    values.iter().all(|v| v.len() % 5 == 0),
                    "{what}: {values:?}"
                )
            }
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => {
                assert!(e.contains(WEIGHTS_FILE), "{what}: {e}");
                for needle in needles {
                    assert!(e.contains(needle), "{what}: `{needle}` not in {e}");
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_configs_are_refused_naming_the_key() {
    let gpt2 = json!({"model_type": "gpt2", "vocab_size": 100, "n_embd": 64, "n_layer": 2,
        "n_head": 4, "n_positions": 128});
    let llama = json!({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256});
    let with = |base: &Value, key: &str, value: Value| {
        let mut v = base.clone();
        v[key] = value;
        v
    };
    let cases = [
        // `TransformerConfig::gpt2` computes 4 * n_embd.
        (with(&gpt2, "n_embd", json!(u64::MAX)), "`n_embd`"),
        (with(&gpt2, "n_head", json!(0)), "`n_head`"),
        (with(&gpt2, "n_head", json!(3)), "`n_embd`"),
        (with(&llama, "head_dim", json!(1u64 << 62)), "head_dim"),
        (
            with(&llama, "num_attention_heads", json!(0)),
            "`num_attention_heads`",
        ),
        (
            with(&llama, "num_key_value_heads", json!(3)),
            "`num_key_value_heads`",
        ),
        (with(&llama, "hidden_size", json!(-64)), "`hidden_size`"),
        (with(&llama, "vocab_size", json!(1.5)), "`vocab_size`"),
        (
            with(&llama, "eos_token_id", json!(1u64 << 32)),
            "`eos_token_id`",
        ),
        (with(&llama, "bos_token_id", json!([-1])), "`bos_token_id`"),
        (
            with(
                &llama,
                "rope_scaling",
                json!({"type": "dynamic", "factor": 1e300}),
            ),
            "`max_position_embeddings` × `rope_scaling.factor`",
        ),
        (with(&llama, "rms_norm_eps", json!(-1.0)), "`rms_norm_eps`"),
    ];
    for (config, needle) in cases {
        let result = no_panic(|| parse_config(&config, Path::new("dir/config.json")))
            .unwrap_or_else(|m| panic!("{config}: panicked: {m}"));
        let err = result.expect_err(&config.to_string()).to_string();
        assert!(err.starts_with("dir/config.json: "), "{err}");
        assert!(err.contains(needle), "{config}: `{needle}` not in {err}");
    }
}
