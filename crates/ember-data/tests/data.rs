use std::path::PathBuf;

use ember_data::{
    BatchSampler, Corpus, DataError, SplitMix64, TokenCache, TokenSplits, Tokenizer, TokenizerKind,
};

fn write(dir: &std::path::Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, contents).unwrap();
    path
}

const TEXT: &str =
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n";

#[test]
fn char_tokenizer_round_trips_and_rejects_unknown_characters() {
    let dir = tempfile::tempdir().unwrap();
    let cache = TokenCache::load_or_build(
        &dir.path().join("c"),
        &[write(dir.path(), "a.txt", TEXT.as_bytes())],
        TokenizerKind::Char,
    )
    .unwrap();
    let tok = &cache.tokenizer;
    assert_eq!(tok.decode(&tok.encode(TEXT).unwrap()).unwrap(), TEXT);
    // Sorted unique characters, as nanoGPT's prepare.py builds them.
    let mut chars: Vec<char> = TEXT.chars().collect();
    chars.sort();
    chars.dedup();
    assert_eq!(tok.vocab_size(), chars.len());
    assert_eq!(tok.encode("\n").unwrap(), vec![0]);
    match tok.encode("Speak!?") {
        Err(DataError::UnknownChar { ch: '!', offset: 5 }) => {}
        other => panic!("expected an unknown-character error, got {other:?}"),
    }
    // Saved and loaded tokenizers agree.
    let loaded = Tokenizer::load(&dir.path().join("c")).unwrap();
    assert_eq!(loaded.encode(TEXT).unwrap(), tok.encode(TEXT).unwrap());
}

#[test]
fn bpe_tokenizer_round_trips_any_text_through_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = TEXT.repeat(20);
    let path = write(dir.path(), "a.txt", corpus.as_bytes());
    let cache = TokenCache::load_or_build(
        &dir.path().join("c"),
        &[path],
        TokenizerKind::Bpe { vocab_size: 300 },
    )
    .unwrap();
    assert!(dir.path().join("c/tokenizer.json").exists());
    let tok = Tokenizer::load(&dir.path().join("c")).unwrap();
    assert!(tok.vocab_size() <= 300 && tok.vocab_size() > 257);
    for text in [
        TEXT,
        "unseen words: ünïcödé ✓ and emoji 🦀",
        "  leading spaces\tand tabs\n",
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    // Merges were learned: the corpus takes fewer tokens than bytes.
    assert!(tok.encode(TEXT).unwrap().len() < TEXT.len() / 2);
    assert!(!cache.tokens.is_empty());
}

#[test]
fn token_cache_is_reused_until_the_source_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "a.txt", TEXT.as_bytes());
    let cache_dir = dir.path().join("cache");
    let first =
        TokenCache::load_or_build(&cache_dir, std::slice::from_ref(&path), TokenizerKind::Char)
            .unwrap();
    assert!(!first.reused);
    let second =
        TokenCache::load_or_build(&cache_dir, std::slice::from_ref(&path), TokenizerKind::Char)
            .unwrap();
    assert!(second.reused);
    assert_eq!(first.tokens, second.tokens);
    std::fs::write(&path, format!("{TEXT}more text")).unwrap();
    let third = TokenCache::load_or_build(&cache_dir, &[path], TokenizerKind::Char).unwrap();
    assert!(!third.reused);
    assert_eq!(third.tokens.len(), TEXT.len() + "more text".len());
}

#[test]
fn directories_and_jsonl_are_read_in_order() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "docs/b.txt", b"second");
    write(dir.path(), "docs/a.txt", b"first");
    write(dir.path(), "docs/.hidden", b"skipped");
    write(dir.path(), "docs/sub/c.md", b"third");
    let jsonl = write(
        dir.path(),
        "d.jsonl",
        b"{\"text\": \"fourth\"}\n\n{\"text\": \"fifth\", \"id\": 2}\n",
    );
    let corpus = Corpus::read(&[dir.path().join("docs"), jsonl.clone()]).unwrap();
    assert_eq!(
        corpus.documents,
        ["first", "second", "third", "fourth", "fifth"]
    );
    assert!(!corpus.paired);
    // Pairs: anchor then positive, and only pair files make a paired corpus.
    let pairs = write(
        dir.path(),
        "pairs.jsonl",
        b"{\"anchor\": \"q1\", \"positive\": \"a1\"}\n{\"anchor\": \"q2\", \"positive\": \"a2\", \"id\": 2}\n",
    );
    let corpus = Corpus::read(std::slice::from_ref(&pairs)).unwrap();
    assert_eq!(corpus.documents, ["q1", "a1", "q2", "a2"]);
    assert!(corpus.paired);
    assert!(!Corpus::read(&[pairs, jsonl]).unwrap().paired);
}

#[test]
fn bad_inputs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let empty = write(dir.path(), "empty.txt", b"");
    let binary = write(dir.path(), "binary.bin", &[0x7f, b'E', b'L', b'F', 0, 1, 2]);
    let latin1 = write(dir.path(), "latin1.txt", &[b'c', b'a', b'f', 0xe9]);
    let bad_jsonl = write(
        dir.path(),
        "bad.jsonl",
        b"{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n",
    );
    let half_pair = write(
        dir.path(),
        "half.jsonl",
        b"{\"anchor\": \"q\", \"positive\": \"a\"}\n{\"anchor\": \"q\"}\n",
    );
    let empty_pair = write(
        dir.path(),
        "blank.jsonl",
        b"{\"anchor\": \" \", \"positive\": \"a\"}\n",
    );
    let pair_among_text = write(
        dir.path(),
        "among.jsonl",
        b"{\"text\": \"t\"}\n{\"anchor\": \"q\", \"positive\": \"a\"}\n",
    );
    let empty_dir = dir.path().join("empty_dir");
    std::fs::create_dir(&empty_dir).unwrap();
    for (path, expected) in [
        (&missing, "no such file"),
        (&empty, "the file is empty"),
        (&binary, "NUL byte"),
        (&latin1, "invalid UTF-8"),
        (&bad_jsonl, ":2: no `text` field"),
        (
            &half_pair,
            ":2: a file of pairs needs `anchor` and `positive`",
        ),
        (&empty_pair, ":1: an empty `anchor` or `positive`"),
        (
            &pair_among_text,
            ":2: a pair (`anchor`) in a file of `text` documents",
        ),
        (&empty_dir, "contains no text files"),
    ] {
        let err = Corpus::read(std::slice::from_ref(path))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn splits_and_batches_follow_nanogpt() {
    let tokens: Vec<u32> = (0..1000).collect();
    let splits = TokenSplits::new(&tokens, 0.1, 8).unwrap();
    assert_eq!(splits.train.len(), 900);
    assert_eq!(splits.val, (900..1000).collect::<Vec<u32>>());
    let mut sampler = BatchSampler::new(7);
    let batch = sampler.sample(&splits.train, 4, 8);
    for row in 0..4 {
        let inputs = &batch.inputs[row * 8..row * 8 + 8];
        let targets = &batch.targets[row * 8..row * 8 + 8];
        // Windows are contiguous and targets are the inputs shifted by one.
        assert!(inputs.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(inputs.iter().zip(targets).all(|(i, t)| *t == i + 1));
        assert!(inputs[0] < 900 - 8);
    }
    // The same seed draws the same batches; the sampler's state is all it needs.
    let mut again = BatchSampler::new(7);
    assert_eq!(again.sample(&splits.train, 4, 8), batch);
    assert_eq!(again, sampler);
    assert!(TokenSplits::new(&tokens[..50], 0.1, 8).is_err());
}

#[test]
fn splitmix64_matches_the_published_sequence() {
    // Reference values of SplitMix64 seeded with 1234567 (Vigna's splitmix64.c).
    let mut rng = SplitMix64::new(1234567);
    let expected = [
        6457827717110365317u64,
        3203168211198807973,
        9817491932198370423,
        4593380528125082431,
        16408922859458223821,
    ];
    for want in expected {
        assert_eq!(rng.next_u64(), want);
    }
}

#[test]
fn batches_split_into_contiguous_near_equal_shards() {
    let batch = ember_data::BatchSampler::new(7).sample(&(0..500).collect::<Vec<u32>>(), 7, 5);
    for parts in [1, 2, 3, 7] {
        let shards = batch.split(parts);
        assert_eq!(shards.len(), parts);
        let rows: Vec<usize> = shards.iter().map(|s| s.batch).collect();
        assert_eq!(rows.iter().sum::<usize>(), 7);
        assert!(
            rows.iter().max().unwrap() - rows.iter().min().unwrap() <= 1,
            "{rows:?}"
        );
        assert!(
            rows.windows(2).all(|w| w[0] >= w[1]),
            "larger shards first: {rows:?}"
        );
        let inputs: Vec<i64> = shards.iter().flat_map(|s| s.inputs.clone()).collect();
        let targets: Vec<i64> = shards.iter().flat_map(|s| s.targets.clone()).collect();
        assert_eq!(inputs, batch.inputs);
        assert_eq!(targets, batch.targets);
        for s in &shards {
            assert_eq!(s.block, 5);
            assert_eq!(s.inputs.len(), s.batch * 5);
        }
    }
    // More shards than rows: one row each, none empty.
    assert_eq!(batch.split(10).len(), 7);
    assert_eq!(batch.split(0).len(), 1);
}

/// A reused `tokens.bin` is checked id by id: one past the tokenizer's vocabulary (a
/// damaged or foreign file of the right length) gets the cache rebuilt, so it can never
/// reach the model's embedding lookup.
#[test]
fn a_token_cache_with_ids_past_the_vocabulary_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "a.txt", TEXT.as_bytes());
    let cache_dir = dir.path().join("cache");
    let build = || {
        TokenCache::load_or_build(&cache_dir, std::slice::from_ref(&path), TokenizerKind::Char)
            .unwrap()
    };
    let first = build();
    let vocab = first.tokenizer.vocab_size() as u32;
    let tokens_bin = cache_dir.join("tokens.bin");
    let mut bytes = std::fs::read(&tokens_bin).unwrap();
    bytes[8..12].copy_from_slice(&vocab.to_le_bytes());
    std::fs::write(&tokens_bin, &bytes).unwrap();
    let second = build();
    assert!(!second.reused, "an id of {vocab} must not be reused");
    assert_eq!(second.tokens, first.tokens);
    assert!(build().reused);
}

/// Only regular files (and directories of them) are corpora: a FIFO is refused before it
/// is opened (opening it would block), as is one inside a directory, and a symlink loop
/// in a directory is walked once.
#[test]
fn special_files_and_symlink_loops() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let err = Corpus::read(std::slice::from_ref(&fifo)).unwrap_err();
    assert!(matches!(err, DataError::NotRegular { .. }), "{err}");
    assert!(err.to_string().contains("a FIFO"), "{err}");
    let err = Corpus::read(&[PathBuf::from("/dev/zero")]).unwrap_err();
    assert!(err.to_string().contains("character device"), "{err}");

    let tree = dir.path().join("tree");
    write(&tree, "a.txt", TEXT.as_bytes());
    std::os::unix::fs::symlink(&tree, tree.join("loop")).unwrap();
    let corpus = Corpus::read(std::slice::from_ref(&tree)).unwrap();
    assert_eq!(corpus.documents, vec![TEXT.to_string()]);
    std::fs::rename(&fifo, tree.join("pipe.txt")).unwrap();
    let err = Corpus::read(&[tree]).unwrap_err();
    assert!(err.to_string().contains("pipe.txt"), "{err}");
}

/// Packed windows: the plain windows (same generator state), with each position's
/// document within its row and its place within that document, checked against a direct
/// walk over the document starts; boundary targets are ignored.
#[test]
fn packed_windows_carry_documents_positions_and_ignored_boundaries() {
    // Token t is t: a window's first input is its offset.
    let tokens: Vec<u32> = (0..300).collect();
    // Documents of varied lengths: 1, 4, 9, 16, … tokens, then one long tail.
    let mut starts = vec![0usize];
    let mut len = 1;
    while starts.last().unwrap() + len < 250 {
        starts.push(starts.last().unwrap() + len);
        len += 2;
    }
    let (block, rows) = (12, 40);
    let packed = BatchSampler::new(3).sample_packed(&tokens, &starts, rows, block);
    let plain = BatchSampler::new(3).sample(&tokens, rows, block);
    assert_eq!(packed.inputs, plain.inputs);
    let documents = packed.documents.as_ref().unwrap();
    let positions = packed.positions.as_ref().unwrap();
    let mut boundaries = 0;
    for row in 0..rows {
        let at = plain.inputs[row * block] as usize;
        let doc_of = |t: usize| starts.iter().rposition(|&s| s <= t).unwrap();
        for j in 0..block {
            let (t, i) = (at + j, row * block + j);
            assert_eq!(
                documents[i] as usize,
                doc_of(t) - doc_of(at),
                "row {row}, {j}"
            );
            assert_eq!(positions[i] as usize, t - starts[doc_of(t)].max(at));
            if starts.contains(&(t + 1)) {
                assert_eq!(packed.targets[i], ember_data::sft::IGNORE);
                boundaries += 1;
            } else {
                assert_eq!(packed.targets[i], plain.targets[i]);
            }
        }
    }
    assert!(boundaries > 10, "the windows cross documents");
    let waste = ember_data::packed_waste(&packed);
    assert!((waste - boundaries as f64 / (rows * block) as f64).abs() < 1e-12);
    // Split into shards, every field follows its rows.
    let halves = packed.split(2);
    assert_eq!(
        halves[1].positions.as_deref(),
        Some(&positions[20 * block..])
    );
    // One document per padded row: 3 tokens (2 targets) in a row of 4 waste 2 of 4; 10
    // tokens (9 targets) fill 3 rows (12 positions) and waste 3; 5 tokens fill one row.
    let waste = ember_data::padded_waste(&[3, 10, 5], 4);
    assert!((waste - (1.0 - 15.0 / 20.0)).abs() < 1e-12, "{waste}");
}

/// The token cache records where each document starts, for both tokenizers, and reads
/// them back when it is reused.
#[test]
fn the_token_cache_records_document_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write(
        tmp.path(),
        "docs.jsonl",
        br#"{"text": "ab"}
{"text": "cde\nf"}
{"text": "g"}
"#,
    );
    let cache = TokenCache::load_or_build(
        &tmp.path().join("c"),
        std::slice::from_ref(&data),
        TokenizerKind::Char,
    )
    .unwrap();
    // "ab\ncde\nf\ng": documents at 0, 3 and 9 (the joining newline ends a document).
    assert_eq!(cache.documents, [0, 3, 9]);
    assert_eq!(cache.tokens.len(), 10);
    let again = TokenCache::load_or_build(
        &tmp.path().join("c"),
        std::slice::from_ref(&data),
        TokenizerKind::Char,
    )
    .unwrap();
    assert!(again.reused);
    assert_eq!(again.documents, [0, 3, 9]);
    let bpe = TokenCache::load_or_build(
        &tmp.path().join("b"),
        &[data],
        TokenizerKind::Bpe { vocab_size: 300 },
    )
    .unwrap();
    let eot = bpe.tokenizer.encode_with_special("<|endoftext|>").unwrap();
    assert_eq!(bpe.documents.len(), 3);
    for &start in &bpe.documents[1..] {
        assert_eq!(&bpe.tokens[start - 1..start], eot.as_slice());
    }
    let splits = TokenSplits::with_documents(&cache.tokens, &cache.documents, 0.5, 2).unwrap();
    assert_eq!(splits.train_documents, [0, 3]);
    assert_eq!(splits.val_documents, [0, 4]);
}
