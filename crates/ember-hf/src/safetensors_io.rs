//! Reading and writing safetensors files, one tensor at a time.
//!
//! The reader parses each file's header itself and reads a tensor's bytes with positioned
//! reads, in chunks, converting f16/bf16 to f32 (and transposing) on the way. Nothing is
//! memory-mapped and no file is read whole, so loading a model holds the model plus about
//! one chunk: peak memory stays near the size of the f32 parameters.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{HfError, at};

/// Single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of sharded weights (`model-0000N-of-0000M.safetensors`).
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Element types Ember reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDType {
    F32,
    F16,
    Bf16,
}

impl WeightDType {
    /// The safetensors name (`F32`, `F16`, `BF16`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            WeightDType::F32 => "F32",
            WeightDType::F16 => "F16",
            WeightDType::Bf16 => "BF16",
        }
    }

    /// The `torch_dtype` / `dtype` name of config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            WeightDType::F32 => "float32",
            WeightDType::F16 => "float16",
            WeightDType::Bf16 => "bfloat16",
        }
    }

    fn size(self) -> usize {
        match self {
            WeightDType::F32 => 4,
            WeightDType::F16 | WeightDType::Bf16 => 2,
        }
    }

    fn safetensors(self) -> safetensors::Dtype {
        match self {
            WeightDType::F32 => safetensors::Dtype::F32,
            WeightDType::F16 => safetensors::Dtype::F16,
            WeightDType::Bf16 => safetensors::Dtype::BF16,
        }
    }

    /// Decodes little-endian elements into `out`.
    fn decode(self, bytes: &[u8], out: &mut impl FnMut(f32)) {
        match self {
            WeightDType::F32 => bytes
                .chunks_exact(4)
                .for_each(|b| out(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            WeightDType::F16 => bytes
                .chunks_exact(2)
                .for_each(|b| out(half::f16::from_le_bytes([b[0], b[1]]).to_f32())),
            WeightDType::Bf16 => bytes
                .chunks_exact(2)
                .for_each(|b| out(half::bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        }
    }

    /// Encodes f32 values (rounding to nearest even for the half types).
    fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(values.len() * self.size());
        for &v in values {
            match self {
                WeightDType::F32 => bytes.extend_from_slice(&v.to_le_bytes()),
                WeightDType::F16 => bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                WeightDType::Bf16 => {
                    bytes.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes())
                }
            }
        }
        bytes
    }
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct TensorLocation {
    file: PathBuf,
    /// `Err(name)` for element types Ember does not read (e.g. `I64` buffers).
    dtype: Result<WeightDType, String>,
    shape: Vec<usize>,
    /// The product of `shape` (checked not to overflow when the header was read).
    numel: usize,
    /// Absolute byte offset of the data in `file`.
    offset: u64,
    /// Bytes of data: `numel` times the element size, inside the file.
    len: u64,
}

/// The largest header Ember reads (the `safetensors` crate's limit too): the length field
/// is untrusted, so it is checked before anything is allocated for it.
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Bits per element of the safetensors element types (`None` for names it does not
/// define, whose extent is still checked against the file).
fn dtype_bits(name: &str) -> Option<u64> {
    Some(match name {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

/// The tensors of a Hugging Face directory: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists.
#[derive(Debug, Clone)]
pub struct WeightFiles {
    tensors: BTreeMap<String, TensorLocation>,
    /// What to name in errors: the weights file, or the index for sharded weights.
    pub source: PathBuf,
}

impl WeightFiles {
    /// One safetensors file (e.g. `peft`'s `adapter_model.safetensors`), its header read
    /// and checked as [`Self::open`] does.
    pub fn open_file(path: &Path) -> Result<Self, HfError> {
        Ok(Self {
            tensors: read_header(path)?.into_iter().collect(),
            source: path.to_path_buf(),
        })
    }

    /// Reads every header (not the data) and checks that each tensor's bytes lie inside
    /// its file.
    pub fn open(dir: &Path) -> Result<Self, HfError> {
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(INDEX_FILE);
        if single.exists() {
            return Ok(Self {
                tensors: read_header(&single)?.into_iter().collect(),
                source: single,
            });
        }
        if !index.exists() {
            return Err(HfError::new(
                &single,
                format!("missing (and no {INDEX_FILE} for sharded weights)"),
            ));
        }
        let text = ember_data::files::read_regular_text(&index).map_err(at(&index))?;
        let parsed: IndexFile = serde_json::from_str(&text)
            .map_err(|e| HfError::new(&index, format!("malformed index: {e}")))?;
        let mut shards: HashMap<String, HashMap<String, TensorLocation>> = HashMap::new();
        let mut tensors = BTreeMap::new();
        for (name, shard) in parsed.weight_map {
            let plain_file_name = Path::new(&shard).file_name() == Some(shard.as_ref())
                && !shard.contains('\\')
                && !shard.contains('\0');
            if !plain_file_name {
                return Err(HfError::new(
                    &index,
                    format!(
                        "tensor `{name}`: shard name `{shard}` is not a file in this directory"
                    ),
                ));
            }
            if !shards.contains_key(&shard) {
                let path = dir.join(&shard);
                if !path.exists() {
                    return Err(HfError::new(
                        &path,
                        format!("missing (listed in {INDEX_FILE} for tensor `{name}`)"),
                    ));
                }
                shards.insert(shard.clone(), read_header(&path)?.into_iter().collect());
            }
            let location = shards[&shard].get(&name).cloned().ok_or_else(|| {
                HfError::new(
                    &dir.join(&shard),
                    format!("tensor `{name}` is listed in {INDEX_FILE} but not in this shard"),
                )
            })?;
            tensors.insert(name, location);
        }
        Ok(Self {
            tensors,
            source: index,
        })
    }

    /// Every tensor name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The stored shape of `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    /// The element type of the first tensor (what `config.json`'s `dtype` should say).
    pub fn dtype(&self) -> Option<WeightDType> {
        self.tensors.values().find_map(|t| t.dtype.clone().ok())
    }

    /// Reads `name` as f32 in its stored layout, or transposed when `transpose` (2-D only).
    ///
    /// The element type, the shape and the byte length are checked before anything is
    /// read, and the file again for its length (it may have changed since [`Self::open`]).
    pub fn read(&self, name: &str, transpose: bool) -> Result<Vec<f32>, HfError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| HfError::new(&self.source, format!("missing tensor `{name}`")))?;
        let fail = |message: String| HfError::new(&t.file, format!("tensor `{name}`: {message}"));
        let dtype = t.dtype.clone().map_err(|d| {
            fail(format!(
                "has dtype {d}; Ember reads F32, F16 and BF16 (as f32)"
            ))
        })?;
        let numel = t.numel;
        if (numel as u64).checked_mul(dtype.size() as u64) != Some(t.len) {
            return Err(fail(format!(
                "{} bytes cannot hold shape {:?} of {}",
                t.len,
                t.shape,
                dtype.safetensors_name()
            )));
        }
        let (rows, cols) = match t.shape.as_slice() {
            [rows, cols] => (*rows, *cols),
            _ if transpose => {
                return Err(fail(format!("expected 2 dimensions, got {:?}", t.shape)));
            }
            _ => (1, numel),
        };
        if numel == 0 {
            return Ok(Vec::new());
        }
        let file = File::open(&t.file).map_err(at(&t.file))?;
        let file_len = file.metadata().map_err(at(&t.file))?.len();
        let end = t.offset + t.len;
        if file_len < end {
            return Err(fail(format!(
                "ends at byte {end}, but the file now holds {file_len} bytes (it changed after its header was read)"
            )));
        }
        // `numel * size` bytes lie inside the file, so this allocation is bounded by the
        // file's size (twice it for f16/bf16).
        let mut out = vec![0f32; numel];
        // Whole rows per read, about 1 MiB at a time.
        let row_bytes = cols * dtype.size();
        let rows_per_chunk = ((1 << 20) / row_bytes).max(1);
        let mut buf = vec![0u8; rows_per_chunk.min(rows) * row_bytes];
        let mut row = 0;
        while row < rows {
            let n = rows_per_chunk.min(rows - row);
            let bytes = &mut buf[..n * row_bytes];
            file.read_exact_at(bytes, t.offset + (row * row_bytes) as u64)
                .map_err(|e| fail(format!("cannot read: {e}")))?;
            let mut i = row * cols;
            if transpose {
                dtype.decode(bytes, &mut |v| {
                    let (r, c) = (i / cols, i % cols);
                    out[c * rows + r] = v;
                    i += 1;
                });
            } else {
                dtype.decode(bytes, &mut |v| {
                    out[i] = v;
                    i += 1;
                });
            }
            row += n;
        }
        Ok(out)
    }
}

/// Parses one file's header and checks every tensor against it and the file: a known
/// element type's byte length against its shape (whose product must not overflow), each
/// tensor's bytes inside the file, and no two tensors sharing bytes. The header's length
/// is checked against the file's size (and [`MAX_HEADER_BYTES`]) before it is read.
fn read_header(path: &Path) -> Result<Vec<(String, TensorLocation)>, HfError> {
    ember_data::files::ensure_regular(path).map_err(at(path))?;
    let file = File::open(path).map_err(at(path))?;
    let metadata = file.metadata().map_err(at(path))?;
    if !metadata.is_file() {
        return Err(HfError::new(path, "not a regular file"));
    }
    let file_len = metadata.len();
    let corrupt = |what: String| {
        HfError::new(
            path,
            format!("truncated or corrupt safetensors file: {what}"),
        )
    };
    if file_len < 8 {
        return Err(corrupt(format!(
            "{file_len} bytes, too short for a safetensors header"
        )));
    }
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0).map_err(at(path))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES {
        return Err(corrupt(format!(
            "the header claims {header_len} bytes, more than the {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    if header_len > file_len - 8 {
        return Err(corrupt(format!(
            "the header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8).map_err(at(path))?;
    let header = std::str::from_utf8(&header)
        .map_err(|e| corrupt(format!("the header is not UTF-8 text: {e}")))?;
    let entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(header).map_err(|e| {
            HfError::new(
                path,
                format!("malformed safetensors header (expected a JSON object of tensors): {e}"),
            )
        })?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let bad = |message: String| HfError::new(path, format!("tensor `{name}`: {message}"));
        let entry: HeaderEntry = serde_json::from_value(value)
            .map_err(|e| bad(format!("malformed header entry: {e}")))?;
        let dtype = match entry.dtype.as_str() {
            "F32" => Ok(WeightDType::F32),
            "F16" => Ok(WeightDType::F16),
            "BF16" => Ok(WeightDType::Bf16),
            other => Err(other.to_string()),
        };
        let numel = entry
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                bad(format!(
                    "shape {:?} has more elements than a 64-bit count holds",
                    entry.shape
                ))
            })?;
        let [begin, end] = entry.data_offsets;
        if end < begin {
            return Err(bad(format!("data_offsets [{begin}, {end}] are reversed")));
        }
        if end > data_len {
            return Err(corrupt(format!(
                "tensor `{name}` ends at data byte {end} but the file holds {data_len} data bytes"
            )));
        }
        let len = end - begin;
        if let Some(bits) = dtype_bits(&entry.dtype) {
            let needed = (numel as u128) * u128::from(bits);
            if needed.div_ceil(8) != u128::from(len) {
                return Err(bad(format!(
                    "data_offsets [{begin}, {end}] hold {len} bytes, but shape {:?} of {} needs {}",
                    entry.shape,
                    entry.dtype,
                    needed.div_ceil(8)
                )));
            }
        }
        tensors.push((
            name,
            TensorLocation {
                file: path.to_path_buf(),
                dtype,
                shape: entry.shape,
                numel,
                offset: data_start + begin,
                len,
            },
        ));
    }
    let mut extents: Vec<(u64, u64, &str)> = tensors
        .iter()
        .filter(|(_, t)| t.len > 0)
        .map(|(name, t)| (t.offset, t.offset + t.len, name.as_str()))
        .collect();
    extents.sort_unstable();
    for pair in extents.windows(2) {
        let ((a_begin, a_end, a), (b_begin, b_end, b)) = (pair[0], pair[1]);
        if b_begin < a_end {
            return Err(corrupt(format!(
                "tensors `{a}` and `{b}` overlap (file bytes [{a_begin}, {a_end}) and [{b_begin}, {b_end}))"
            )));
        }
    }
    Ok(tensors)
}

/// One tensor to write.
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

struct EncodedView<'a> {
    dtype: safetensors::Dtype,
    shape: &'a [usize],
    bytes: Vec<u8>,
}

impl safetensors::View for &EncodedView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` to `path` in `dtype`, with the `{"format": "pt"}` metadata that
/// `transformers` requires.
pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    dtype: WeightDType,
) -> Result<(), HfError> {
    let views: Vec<(String, EncodedView)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                EncodedView {
                    dtype: dtype.safetensors(),
                    shape: &t.shape,
                    bytes: dtype.encode(&t.values),
                },
            )
        })
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views.iter().map(|(n, v)| (n, v)), Some(metadata), path)
        .map_err(at(path))
}
