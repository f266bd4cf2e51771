//! Supervised fine-tuning data: JSONL examples, chat templates (checked against renderings
//! by Hugging Face transformers), loss masks, packing and the row sampler.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_data::sft::{
    ChatTemplate, Encoded, Encoder, Example, IGNORE, Message, PackOptions, RowSampler,
    SourcedExample, pack, read_jsonl, split_examples,
};
use ember_data::{BpeTokenizer, CharTokenizer, DataError, SplitMix64, Tokenizer};
use serde_json::json;

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn msg(role: &str, content: &str) -> Message {
    Message::new(role, content)
}

fn sourced(example: Example, line: usize) -> SourcedExample {
    SourcedExample {
        example,
        line,
        path: Arc::from(Path::new("data.jsonl")),
    }
}

// ---------------------------------------------------------------- read_jsonl

#[test]
fn read_jsonl_parses_every_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "data.jsonl",
        concat!(
            "\u{feff}{\"prompt\": \"Q: 2+2?\", \"completion\": \" 4\", \"id\": 7}\n",
            "\n",
            "   \n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\", \"name\": \"x\"}, ",
            "{\"role\": \"assistant\", \"content\": \"hello\"}], \"meta\": {\"a\": 1}}\r\n",
            "{\"text\": \"plain text\"}\n",
            "{\"prompt\": \"\", \"completion\": \"no prompt\"}",
        ),
    );
    let examples = read_jsonl(&path).unwrap();
    let expected = [
        (
            Example::PromptCompletion {
                prompt: "Q: 2+2?".into(),
                completion: " 4".into(),
            },
            1,
        ),
        (
            Example::Messages(vec![msg("user", "hi"), msg("assistant", "hello")]),
            4,
        ),
        (Example::Text("plain text".into()), 5),
        (
            Example::PromptCompletion {
                prompt: String::new(),
                completion: "no prompt".into(),
            },
            6,
        ),
    ];
    assert_eq!(examples.len(), expected.len());
    for (got, (example, line)) in examples.iter().zip(expected) {
        assert_eq!(got.example, example);
        assert_eq!(got.line, line);
        assert_eq!(&*got.path, path.as_path());
    }
}

#[test]
fn read_jsonl_errors_name_path_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"text": "fine"}"#;
    let chat = r#"{"role": "assistant", "content": "ok"}"#;
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            r#"{"prompt": "a", "completion": "b""#.into(),
            vec!["invalid JSON"],
        ),
        (
            r#"{"prompt": 1, "completion": "b"}"#.into(),
            vec!["\"prompt\" is a number"],
        ),
        (
            r#"{"prompt": "a", "completion": null}"#.into(),
            vec!["\"completion\" is null"],
        ),
        (
            r#"{"prompt": "a", "completion": " \n\t "}"#.into(),
            vec!["\"completion\" is empty"],
        ),
        (
            r#"{"prompt": "a"}"#.into(),
            vec!["\"prompt\" without \"completion\""],
        ),
        (
            r#"{"completion": "a"}"#.into(),
            vec!["\"completion\" without \"prompt\""],
        ),
        (r#"{"text": ""}"#.into(), vec!["\"text\" is empty"]),
        (r#"{"text": ["a"]}"#.into(), vec!["\"text\" is a list"]),
        (r#"{"messages": []}"#.into(), vec!["\"messages\" is empty"]),
        (
            r#"{"messages": "hi"}"#.into(),
            vec!["\"messages\" is a string"],
        ),
        (
            r#"{"messages": ["hi"]}"#.into(),
            vec!["\"messages\"[0] is a string"],
        ),
        (
            format!(r#"{{"messages": [{chat}, {{"content": "x"}}]}}"#),
            vec!["\"messages\"[1] has no \"role\""],
        ),
        (
            r#"{"messages": [{"role": "assistant"}]}"#.into(),
            vec!["\"messages\"[0] has no \"content\""],
        ),
        (
            r#"{"messages": [{"role": "assistant", "content": 3}]}"#.into(),
            vec!["\"messages\"[0].\"content\" is a number"],
        ),
        (
            r#"{"messages": [{"role": 5, "content": "x"}]}"#.into(),
            vec!["\"messages\"[0].\"role\" is a number"],
        ),
        (
            r#"{"messages": [{"role": "user", "content": "x"}]}"#.into(),
            vec![
                "\"messages\" has no \"assistant\" message",
                "nothing to learn",
            ],
        ),
        (
            format!(r#"{{"messages": [{chat}], "text": "x"}}"#),
            vec!["both", "\"messages\"", "\"text\""],
        ),
        (
            r#"{"prompt": "p", "completion": "c", "text": "x"}"#.into(),
            vec!["both", "\"prompt\"/\"completion\"", "\"text\""],
        ),
        (
            r#"{"body": "x"}"#.into(),
            vec!["no \"prompt\"/\"completion\", \"messages\", \"text\" or \"input_ids\" key"],
        ),
        ("[1, 2]".into(), vec!["a list is not an example"]),
    ];
    for (i, (line, expected)) in cases.iter().enumerate() {
        let path = write(
            dir.path(),
            &format!("case{i}.jsonl"),
            &format!("{good}\n\n{line}\n{good}\n"),
        );
        let err = read_jsonl(&path).unwrap_err();
        assert!(err.is_bad_input());
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}:3: ", path.display())),
            "{text}"
        );
        for part in expected {
            assert!(text.contains(part), "{line}: {text} lacks {part}");
        }
    }
    // The exact message for an empty completion.
    let path = write(
        dir.path(),
        "data.jsonl",
        &format!("{}\n", r#"{"prompt": "a", "completion": ""}"#),
    );
    assert_eq!(
        read_jsonl(&path).unwrap_err().to_string(),
        format!(
            "{}:1: \"completion\" is empty; every example needs text to learn",
            path.display()
        )
    );
    // A file without examples, empty or blank.
    for (name, contents) in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")] {
        let path = write(dir.path(), name, contents);
        let err = read_jsonl(&path).unwrap_err();
        assert!(matches!(err, DataError::NoExamples { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: no examples", path.display()))
        );
    }
    let err = read_jsonl(&dir.path().join("missing.jsonl")).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    let err = read_jsonl(dir.path()).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
    std::fs::write(
        dir.path().join("latin1.jsonl"),
        b"{\"text\": \"caf\xe9\"}\n",
    )
    .unwrap();
    let err = read_jsonl(&dir.path().join("latin1.jsonl")).unwrap_err();
    assert!(matches!(err, DataError::Binary { .. }), "{err}");
}

// ---------------------------------------------------------------- chat templates

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Zephyr's template (HuggingFaceH4/zephyr-7b-beta), over several lines: the output
/// depends on `trim_blocks` and `lstrip_blocks`.
const ZEPHYR: &str = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

fn conversation() -> Vec<Message> {
    vec![
        msg("system", "Be brief."),
        msg("user", "Hi!"),
        msg("assistant", "Hello."),
        msg("user", "2+2?"),
        msg("assistant", "4"),
    ]
}

fn trained_text(pieces: &[(String, bool)]) -> Vec<&str> {
    pieces
        .iter()
        .filter(|p| p.1)
        .map(|p| p.0.as_str())
        .collect()
}

#[test]
fn chatml_and_zephyr_render_and_segment_as_written_out_by_hand() {
    let chatml = ChatTemplate::from_source(CHATML, "qwen2", None, None).unwrap();
    let expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n";
    assert_eq!(chatml.render(&conversation(), false).unwrap(), expected);
    assert_eq!(
        chatml.render(&conversation()[..4], true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let pieces = chatml.segments(&conversation()).unwrap();
    let expected_pieces = [
        (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
            false,
        ),
        ("Hello.<|im_end|>\n", true),
        (
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
            false,
        ),
        ("4<|im_end|>\n", true),
    ];
    let pieces_ref: Vec<(&str, bool)> = pieces.iter().map(|(s, t)| (s.as_str(), *t)).collect();
    assert_eq!(pieces_ref, expected_pieces);
    // The built-in template is ChatML.
    let builtin = ChatTemplate::builtin();
    assert_eq!(builtin.render(&conversation(), false).unwrap(), expected);
    assert_eq!(builtin.segments(&conversation()).unwrap(), pieces);

    let zephyr =
        ChatTemplate::from_source(ZEPHYR, "zephyr", Some("<s>".into()), Some("</s>".into()))
            .unwrap();
    assert_eq!(
        zephyr.render(&conversation(), false).unwrap(),
        "<|system|>\nBe brief.</s>\n<|user|>\nHi!</s>\n<|assistant|>\nHello.</s>\n<|user|>\n2+2?</s>\n<|assistant|>\n4</s>\n"
    );
    assert_eq!(
        zephyr.render(&conversation()[..2], true).unwrap(),
        "<|system|>\nBe brief.</s>\n<|user|>\nHi!</s>\n<|assistant|>\n"
    );
    let pieces = zephyr.segments(&conversation()).unwrap();
    assert_eq!(trained_text(&pieces), ["Hello.</s>\n", "4</s>\n"]);
    let joined: String = pieces.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(joined, zephyr.render(&conversation(), false).unwrap());
    // Without an eos token the template sees an empty string.
    let bare = ChatTemplate::from_source(ZEPHYR, "zephyr", None, None).unwrap();
    assert_eq!(
        bare.render(&conversation()[..3], false).unwrap(),
        "<|system|>\nBe brief.\n<|user|>\nHi!\n<|assistant|>\nHello.\n"
    );
}

/// Renderings by transformers 4.46.3 (`tools/fixtures/make_chat_template_fixtures.py`)
/// of ChatML, Zephyr, Llama 2, Llama 3, Gemma and a template exercising Python methods,
/// namespaces, loop controls, `tojson` and `{% generation %}` blocks.
#[test]
fn templates_render_every_prefix_as_transformers_does() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/chat_templates.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let mut checked = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let token = |key: &str| case[key].as_str().map(String::from);
        let template = ChatTemplate::from_source(
            case["template"].as_str().unwrap(),
            name,
            token("bos_token"),
            token("eos_token"),
        )
        .unwrap();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let mut failed = None;
        for render in case["renders"].as_array().unwrap() {
            let n = render["messages"].as_u64().unwrap() as usize;
            let prompt = render["add_generation_prompt"].as_bool().unwrap();
            let got = template.render(&messages[..n], prompt);
            match (render.get("text"), got) {
                (Some(text), Ok(got)) => {
                    assert_eq!(got, text.as_str().unwrap(), "{name} {n} {prompt}")
                }
                (None, Err(err)) => {
                    let message = render["error"].as_str().unwrap();
                    let text = err.to_string();
                    assert!(text.starts_with(&format!("{name}: ")), "{text}");
                    assert!(text.contains(message), "{name}: {text} lacks {message}");
                    failed = Some(message.to_string());
                }
                (expected, got) => {
                    panic!("{name} {n} {prompt}: expected {expected:?}, got {got:?}")
                }
            }
            checked += 1;
        }
        // Segments: the pieces make up the full rendering; the trained ones are the
        // assistant turns as transformers' own renderings of the prefixes give them.
        let segments = template.segments(&messages);
        if let Some(message) = failed {
            assert!(segments.unwrap_err().to_string().contains(&message));
            continue;
        }
        let pieces = segments.unwrap();
        let joined: String = pieces.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(joined, template.render(&messages, false).unwrap(), "{name}");
        let rendered = |n: usize, prompt: bool| {
            case["renders"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["messages"] == n && r["add_generation_prompt"] == prompt)
                .unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let turns: Vec<String> = (0..messages.len())
            .filter(|&i| messages[i].role == "assistant")
            .map(|i| rendered(i + 1, false)[rendered(i, true).len()..].to_string())
            .collect();
        assert_eq!(trained_text(&pieces), turns, "{name}");
        // Where transformers marks the assistant text itself, it agrees.
        if let Some(texts) = case.get("generation_texts") {
            let texts: Vec<String> = serde_json::from_value(texts.clone()).unwrap();
            assert_eq!(trained_text(&pieces), texts, "{name}");
        }
    }
    assert!(checked >= 60, "{checked}");
}

#[test]
fn template_failures_name_the_origin() {
    let llama2 = "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ message['content'] }}{% endfor %}";
    let t = ChatTemplate::from_source(
        llama2,
        "/m/tokenizer_config.json: chat_template",
        None,
        None,
    )
    .unwrap();
    let err = t.render(&[msg("assistant", "x")], false).unwrap_err();
    assert!(matches!(err, DataError::Template { .. }));
    let text = err.to_string();
    assert!(
        text.starts_with("/m/tokenizer_config.json: chat_template: "),
        "{text}"
    );
    assert!(
        text.contains("Conversation roles must alternate user/assistant/user/assistant/..."),
        "{text}"
    );
    let err = t
        .segments(&[msg("assistant", "x"), msg("assistant", "y")])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Conversation roles must alternate"),
        "{err}"
    );

    let err = ChatTemplate::from_source(
        "{% for m in messages %}{{ m.content }}",
        "broken.jinja",
        None,
        None,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("broken.jinja: syntax error"), "{text}");
    let t = ChatTemplate::from_source(
        "{{ messages | no_such_filter }}",
        "filters.jinja",
        None,
        None,
    );
    let err = t
        .and_then(|t| t.render(&[msg("user", "x")], false))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("filters.jinja: ") && err.contains("no_such_filter"),
        "{err}"
    );
    // Unknown Python-style methods fail rather than print nothing.
    let t = ChatTemplate::from_source(
        "{{ messages[0].content.no_such_method() }}",
        "m.jinja",
        None,
        None,
    )
    .unwrap();
    assert!(
        t.render(&[msg("user", "x")], false)
            .unwrap_err()
            .to_string()
            .starts_with("m.jinja: ")
    );
}

#[test]
fn templates_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + Clone>() {}
    shareable::<ChatTemplate>();
    let t = ChatTemplate::builtin();
    let convo = conversation();
    let renders: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| t.render(&convo, true).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(renders[0], renders[1]);
    assert!(renders[0].ends_with("4<|im_end|>\n<|im_start|>assistant\n"));
}

#[test]
fn templates_that_render_prefixes_inconsistently_are_refused() {
    // Prints the number of messages first, so no rendering starts with a shorter one's.
    let counting = "{{ messages | length }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
    let t = ChatTemplate::from_source(counting, "counting.jinja", None, None).unwrap();
    let convo = [
        msg("user", "a"),
        msg("assistant", "b"),
        msg("user", "c"),
        msg("assistant", "d"),
    ];
    assert_eq!(
        t.render(&convo, false).unwrap(),
        "4<user>a<assistant>b<user>c<assistant>d"
    );
    let err = t.segments(&convo).unwrap_err().to_string();
    assert!(err.starts_with("counting.jinja: "), "{err}");
    assert!(err.contains("at message 1"), "{err}");
    // A generation prompt that the assistant turn does not repeat.
    let mismatch = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[bot]{% endif %}";
    let t = ChatTemplate::from_source(mismatch, "mismatch.jinja", None, None).unwrap();
    let err = t.segments(&convo).unwrap_err().to_string();
    assert!(
        err.starts_with("mismatch.jinja: ") && err.contains("at message 1"),
        "{err}"
    );
    // A trailer after an assistant turn that later messages take away.
    let trailer = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if messages[-1].role == 'assistant' %}[done]{% endif %}{% if add_generation_prompt %}<assistant>{% endif %}";
    let t = ChatTemplate::from_source(trailer, "trailer.jinja", None, None).unwrap();
    assert_eq!(trained_text(&t.segments(&convo[..2]).unwrap()), ["b[done]"]);
    let err = t.segments(&convo[..3]).unwrap_err().to_string();
    assert!(
        err.starts_with("trailer.jinja: ") && err.contains("at message 2"),
        "{err}"
    );
    // A consistent template segments fine.
    let fine = ChatTemplate::from_source(
        &mismatch.replace("[bot]", "[assistant]"),
        "fine",
        None,
        None,
    )
    .unwrap();
    assert_eq!(trained_text(&fine.segments(&convo).unwrap()), ["b", "d"]);
}

#[test]
fn templates_come_from_tokenizer_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str, value: serde_json::Value| {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        write(&sub, "tokenizer_config.json", &value.to_string())
    };
    let convo = [msg("user", "u"), msg("assistant", "a")];
    let tpl = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}";
    // A string template, with AddedToken-object and string special tokens.
    let path = config(
        "string",
        json!({
            "chat_template": tpl,
            "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
            "eos_token": "</s>",
        }),
    );
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
    assert_eq!(t.render(&convo, false).unwrap(), "<s>u</s>a</s>");
    assert_eq!((t.bos_token(), t.eos_token()), (Some("<s>"), Some("</s>")));
    assert_eq!(t.origin(), format!("{}: chat_template", path.display()));
    // A list of named templates: "default" is used.
    let path = config(
        "list",
        json!({
            "chat_template": [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": tpl}],
            "eos_token": null,
        }),
    );
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
    assert_eq!(t.render(&convo, false).unwrap(), "ua");
    // No template: none, unless a sibling chat_template.jinja has one.
    let path = config("none", json!({"bos_token": "<s>"}));
    assert!(
        ChatTemplate::from_tokenizer_config(&path)
            .unwrap()
            .is_none()
    );
    write(
        path.parent().unwrap(),
        "chat_template.jinja",
        "{% for m in messages %}{{ bos_token }}{{ m.role }}{% endfor %}\n",
    );
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
    assert_eq!(t.render(&convo, false).unwrap(), "<s>user<s>assistant");
    assert!(t.origin().ends_with("chat_template.jinja"));
    // Mistakes name the file and the key.
    for (name, value, expected) in [
        (
            "nodefault",
            json!({"chat_template": [{"name": "rag", "template": "x"}]}),
            "no template named \"default\" (it has \"rag\")",
        ),
        (
            "badlist",
            json!({"chat_template": [{"name": "default"}]}),
            "\"chat_template\"[0] is not an object",
        ),
        (
            "badtype",
            json!({"chat_template": 3}),
            "\"chat_template\" is a number",
        ),
        (
            "badbos",
            json!({"chat_template": "x", "bos_token": 1}),
            "\"bos_token\" is a number",
        ),
        (
            "badeos",
            json!({"chat_template": "x", "eos_token": {"id": 2}}),
            "\"eos_token\" is an object without a string \"content\"",
        ),
        ("notobject", json!([1]), "expected a JSON object"),
    ] {
        let path = config(name, value);
        let err = ChatTemplate::from_tokenizer_config(&path)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
        assert!(err.contains(expected), "{err}");
    }
    let path = write(dir.path(), "invalid.json", "{\"chat_template\": ");
    let err = ChatTemplate::from_tokenizer_config(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{}: invalid JSON", path.display())),
        "{err}"
    );
    let path = config("syntax", json!({"chat_template": "{% if %}"}));
    let err = ChatTemplate::from_tokenizer_config(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{}: chat_template: syntax error", path.display())),
        "{err}"
    );
}

// ---------------------------------------------------------------- encode

/// Characters the test tokenizer knows; its id of a character is its index in sorted order.
const ALPHABET: &str = "\n !+.0123456789:<>?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz|";
const SPECIALS: [&str; 4] = ["<|im_start|>", "<|im_end|>", "<s>", "</s>"];

/// A character-level Hugging Face tokenizer with the added special tokens `SPECIALS`
/// (ids right after the characters).
fn chat_tokenizer() -> Tokenizer {
    let chars = Tokenizer::Char(CharTokenizer::from_text(ALPHABET));
    let mut doc: serde_json::Value = serde_json::from_str(&chars.to_hf_json().unwrap()).unwrap();
    let base = ALPHABET.chars().count();
    let mut added = Vec::new();
    for (i, token) in SPECIALS.iter().enumerate() {
        doc["model"]["vocab"][*token] = json!(base + i);
        added.push(
            json!({"id": base + i, "content": token, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}),
        );
    }
    doc["added_tokens"] = json!(added);
    Tokenizer::Bpe(Box::new(
        BpeTokenizer::from_json(&doc.to_string(), Path::new("test")).unwrap(),
    ))
}

/// Hand-computed ids: a character's index in the sorted alphabet, a special token's id.
fn ids(text: &str) -> Vec<u32> {
    let mut sorted: Vec<char> = ALPHABET.chars().collect();
    sorted.sort();
    let mut out = Vec::new();
    let mut rest = text;
    'outer: while let Some(c) = rest.chars().next() {
        for (i, s) in SPECIALS.iter().enumerate() {
            if let Some(r) = rest.strip_prefix(s) {
                out.push((sorted.len() + i) as u32);
                rest = r;
                continue 'outer;
            }
        }
        out.push(sorted.iter().position(|&x| x == c).unwrap() as u32);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[test]
fn special_token_text_becomes_the_special_token() {
    let tok = chat_tokenizer();
    let ids_of = tok.encode("hi<|im_end|>\n").unwrap();
    assert_eq!(ids_of, ids("hi<|im_end|>\n"));
    assert_eq!(ids_of.len(), 4);
    let im_end = ALPHABET.chars().count() as u32 + 1;
    assert_eq!(ids_of[2], im_end);
}

#[test]
fn examples_encode_with_hand_computed_tokens_and_masks() {
    let tok = chat_tokenizer();
    let template = ChatTemplate::builtin();
    let n = ALPHABET.chars().count() as u32;
    let (bos, eos) = (n + 2, n + 3);
    let encoder = Encoder {
        tokenizer: Some(&tok),
        template: &template,
        bos: Some(bos),
        eos: Some(eos),
    };
    let flags = |untrained: usize, trained: usize| {
        let mut v = vec![false; untrained];
        v.extend(vec![true; trained]);
        v
    };

    // Prompt/completion: [bos] + prompt untrained, completion + [eos] trained.
    let e = sourced(
        Example::PromptCompletion {
            prompt: "Q: 2+2?".into(),
            completion: " 4.".into(),
        },
        3,
    );
    let got = encoder.encode(&e).unwrap();
    let mut tokens = vec![bos];
    tokens.extend(ids("Q: 2+2?"));
    tokens.extend(ids(" 4."));
    tokens.push(eos);
    assert_eq!(
        got,
        Encoded {
            tokens,
            trained: flags(8, 4),
            line: 3
        }
    );

    // Text: [bos] untrained, text + [eos] trained; without bos/eos only the text.
    let e = sourced(Example::Text("Hi there".into()), 9);
    let got = encoder.encode(&e).unwrap();
    assert_eq!(got.tokens, [vec![bos], ids("Hi there"), vec![eos]].concat());
    assert_eq!(got.trained, flags(1, 9));
    let plain = Encoder {
        bos: None,
        eos: None,
        ..encoder
    };
    let got = plain.encode(&e).unwrap();
    assert_eq!((got.tokens, got.trained), (ids("Hi there"), flags(0, 8)));

    // Messages: the template's pieces, special-token text as the special ids, no bos/eos.
    let e = sourced(
        Example::Messages(vec![msg("user", "hi"), msg("assistant", "ok!")]),
        12,
    );
    let got = encoder.encode(&e).unwrap();
    let prompt = ids("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    let answer = ids("ok!<|im_end|>\n");
    assert_eq!(prompt.len(), 21);
    assert_eq!(answer.len(), 5);
    assert_eq!(got.tokens, [prompt, answer].concat());
    assert_eq!(got.trained, flags(21, 5));
    assert_eq!(got.line, 12);
}

#[test]
fn bpe_pieces_are_encoded_separately() {
    let docs: Vec<String> = (0..30)
        .map(|i| format!("question {i}? answer {i}. the answer is here"))
        .collect();
    let bpe = Tokenizer::Bpe(Box::new(BpeTokenizer::train(&docs, 300).unwrap()));
    let template = ChatTemplate::builtin();
    let encoder = Encoder {
        tokenizer: Some(&bpe),
        template: &template,
        bos: None,
        eos: bpe.encode("<|endoftext|>").unwrap().first().copied(),
    };
    let (prompt, completion) = ("question 7?", " answer 7.");
    let e = sourced(
        Example::PromptCompletion {
            prompt: prompt.into(),
            completion: completion.into(),
        },
        1,
    );
    let got = encoder.encode(&e).unwrap();
    let (p, c) = (bpe.encode(prompt).unwrap(), bpe.encode(completion).unwrap());
    assert_eq!(
        got.tokens,
        [p.clone(), c.clone(), vec![encoder.eos.unwrap()]].concat()
    );
    assert_eq!(
        got.trained,
        [vec![false; p.len()], vec![true; c.len() + 1]].concat()
    );
}

#[test]
fn unusable_examples_are_errors_naming_path_and_line() {
    let tok = chat_tokenizer();
    let template = ChatTemplate::builtin();
    let encoder = Encoder {
        tokenizer: Some(&tok),
        template: &template,
        bos: None,
        eos: None,
    };
    let cases = [
        (Example::Text("a".into()), "encodes to 1 token"),
        (
            Example::PromptCompletion {
                prompt: "ab".into(),
                completion: String::new(),
            },
            "no trained token",
        ),
        // One trained token, but it is the first: never a target.
        (
            Example::PromptCompletion {
                prompt: String::new(),
                completion: "a".into(),
            },
            "encodes to 1 token",
        ),
    ];
    for (example, expected) in cases {
        let err = encoder
            .encode(&sourced(example, 41))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("data.jsonl:41: ") && err.contains(expected),
            "{err}"
        );
    }
    // A template failure and a character outside the vocabulary are placed too.
    let strict = ChatTemplate::from_source(
        "{% for m in messages %}{{ raise_exception('no ' + m.role) }}{% endfor %}",
        "strict",
        None,
        None,
    )
    .unwrap();
    let e = Encoder {
        template: &strict,
        ..encoder
    };
    let err = e
        .encode(&sourced(Example::Messages(vec![msg("assistant", "x")]), 5))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("data.jsonl:5: strict: ") && err.contains("no assistant"),
        "{err}"
    );
    let chars = Tokenizer::Char(CharTokenizer::from_text("ab"));
    let e = Encoder {
        tokenizer: Some(&chars),
        ..encoder
    };
    let err = e
        .encode(&sourced(Example::Text("abc".into()), 6))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("data.jsonl:6: ") && err.contains("'c'"),
        "{err}"
    );
}

// ---------------------------------------------------------------- pack

fn enc(tokens: &[u32], trained: &str, line: usize) -> Encoded {
    Encoded {
        tokens: tokens.to_vec(),
        trained: trained.chars().map(|c| c == 'T').collect(),
        line,
    }
}

const I: i64 = IGNORE;

fn examples() -> Vec<Encoded> {
    vec![
        enc(&[10, 11, 12], "..T", 1),                     // 2 pairs, 1 trained
        enc(&[20, 21], ".T", 2),                          // 1 pair, trained
        enc(&[30, 31, 32, 33], ".TTT", 3),                // 3 pairs, all trained
        enc(&[40, 41, 42, 43, 44, 45, 46], ".....TT", 4), // 6 pairs: the first 4 untrained
        enc(&[50, 51, 52, 53, 54, 55], "..TTTT", 5),      // 5 pairs, cut to 4 (3 trained)
    ]
}

#[test]
fn packing_lays_examples_greedily_with_masks_documents_and_padding() {
    let options = PackOptions {
        block: 4,
        pack: true,
        pad_id: 99,
        truncate: true,
    };
    let rows = pack(&examples(), &options).unwrap();
    assert_eq!(rows.rows(), 3);
    assert_eq!(rows.block, 4);
    assert_eq!(
        rows.inputs,
        [10, 11, 20, 99, 30, 31, 32, 99, 50, 51, 52, 53]
    );
    assert_eq!(rows.targets, [I, 12, 21, I, 31, 32, 33, I, I, 52, 53, 54]);
    assert_eq!(rows.documents, [0, 0, 1, 2, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(
        (rows.truncated, rows.dropped, rows.trained_targets),
        (1, 1, 8)
    );
    assert_eq!(rows.trained_in(&[0, 1, 2]), 8);
    let (inputs, targets, documents) = rows.gather(&[2, 0]);
    assert_eq!(inputs, [50, 51, 52, 53, 10, 11, 20, 99]);
    assert_eq!(targets, [I, 52, 53, 54, I, 12, 21, I]);
    assert_eq!(documents, [0, 0, 0, 0, 0, 0, 1, 2]);
    assert_eq!(rows.trained_in(&[2, 0]), 5);
    assert_eq!(rows.trained_in(&[1, 1]), 6);
    assert_eq!(rows.gather(&[]), (vec![], vec![], vec![]));

    // Examples filling a row exactly leave no padding; the next row starts at document 0.
    let exact = [
        enc(&[1, 2, 3], ".TT", 1),
        enc(&[4, 5, 6], ".TT", 2),
        enc(&[7, 8], ".T", 3),
    ];
    let rows = pack(&exact, &options).unwrap();
    assert_eq!(rows.inputs, [1, 2, 4, 5, 7, 99, 99, 99]);
    assert_eq!(rows.targets, [2, 3, 5, 6, 8, I, I, I]);
    assert_eq!(rows.documents, [0, 0, 1, 1, 0, 1, 1, 1]);
}

#[test]
fn without_packing_each_example_has_its_own_row() {
    let options = PackOptions {
        block: 4,
        pack: false,
        pad_id: 0,
        truncate: true,
    };
    let rows = pack(&examples(), &options).unwrap();
    assert_eq!(rows.rows(), 4);
    assert_eq!(
        rows.inputs,
        [10, 11, 0, 0, 20, 0, 0, 0, 30, 31, 32, 0, 50, 51, 52, 53]
    );
    assert_eq!(
        rows.targets,
        [I, 12, I, I, 21, I, I, I, 31, 32, 33, I, I, 52, 53, 54]
    );
    assert_eq!(
        rows.documents,
        [0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0]
    );
    assert_eq!(
        (rows.truncated, rows.dropped, rows.trained_targets),
        (1, 1, 8)
    );
}

#[test]
fn packing_limits_and_odd_inputs() {
    let options = PackOptions {
        block: 4,
        pack: true,
        pad_id: 0,
        truncate: false,
    };
    let err = pack(&examples(), &options).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::ExampleTooLong {
                line: 4,
                tokens: 7,
                block: 4
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("line 4") && text.contains("7 tokens") && text.contains("block size 4"),
        "{text}"
    );
    // Exactly block + 1 tokens fit without truncation.
    let rows = pack(&[enc(&[1, 2, 3, 4, 5], ".TTTT", 1)], &options).unwrap();
    assert_eq!(
        (rows.inputs, rows.targets),
        (vec![1, 2, 3, 4], vec![2, 3, 4, 5])
    );
    assert!(matches!(
        pack(
            &[],
            &PackOptions {
                block: 0,
                ..options
            }
        ),
        Err(DataError::ZeroBlock)
    ));
    let rows = pack(&[], &options).unwrap();
    assert_eq!((rows.rows(), rows.trained_targets), (0, 0));
    // Too short, untrained or with too few flags: dropped, never a panic.
    let odd = [
        enc(&[], "", 1),
        enc(&[5], "T", 2),
        enc(&[5, 6], "TF", 3),
        enc(&[5, 6, 7], ".", 4),
    ];
    let rows = pack(&odd, &options).unwrap();
    assert_eq!((rows.rows(), rows.dropped), (0, 4));
}

// ---------------------------------------------------------------- sampler

#[test]
fn every_row_appears_once_per_epoch_and_epochs_differ() {
    let rows = 7;
    let mut sampler = RowSampler::new(42);
    let mut drawn = Vec::new();
    while drawn.len() < rows * 4 {
        drawn.extend(sampler.next(rows, 5));
    }
    assert_eq!(sampler.cursor, drawn.len() as u64);
    assert_eq!(sampler.epoch(rows), drawn.len() as u64 / rows as u64);
    let epochs: Vec<Vec<usize>> = drawn.chunks(rows).take(4).map(|c| c.to_vec()).collect();
    for epoch in &epochs {
        let mut sorted = epoch.clone();
        sorted.sort();
        assert_eq!(sorted, (0..rows).collect::<Vec<_>>());
    }
    assert!(epochs.windows(2).any(|w| w[0] != w[1]));
    let big = RowSampler::new(1);
    assert_ne!(big.permutation(0, 50), big.permutation(1, 50));
    assert_ne!(
        big.permutation(0, 50),
        RowSampler::new(2).permutation(0, 50)
    );
    // The documented construction: Fisher–Yates driven by SplitMix64(mix(mix(seed) ^ epoch)).
    let mix = |x: u64| SplitMix64::new(x).next_u64();
    for epoch in 0..3 {
        let mut rng = SplitMix64::new(mix(mix(42) ^ epoch));
        let mut order: Vec<usize> = (0..rows).collect();
        for i in (1..rows).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        assert_eq!(epochs[epoch as usize], order);
    }
    // No rows: nothing drawn.
    let mut empty = RowSampler::new(3);
    assert!(empty.next(0, 4).is_empty());
    assert_eq!((empty.cursor, empty.epoch(0)), (0, 0));
}

#[test]
fn a_resumed_sampler_draws_what_an_uninterrupted_one_does() {
    let rows = 13;
    let batches = [3, 5, 4, 13, 1, 7, 20, 2];
    let mut straight = RowSampler::new(7);
    let expected: Vec<Vec<usize>> = batches.iter().map(|&b| straight.next(rows, b)).collect();
    for stop in 0..batches.len() {
        let mut first = RowSampler::new(7);
        let mut got: Vec<Vec<usize>> = batches[..stop]
            .iter()
            .map(|&b| first.next(rows, b))
            .collect();
        let saved = serde_json::to_string(&first).unwrap();
        let mut resumed: RowSampler = serde_json::from_str(&saved).unwrap();
        got.extend(batches[stop..].iter().map(|&b| resumed.next(rows, b)));
        assert_eq!(got, expected, "stopped after {stop} batches");
    }
    // The sequence depends on the cursor only, not on how it was cut into batches.
    let flat: Vec<usize> = expected.concat();
    let mut ones = RowSampler::new(7);
    let singles: Vec<usize> = (0..flat.len()).flat_map(|_| ones.next(rows, 1)).collect();
    assert_eq!(singles, flat);
}

#[test]
fn examples_split_by_seed() {
    let items: Vec<u32> = (0..10).collect();
    let (train, val) = split_examples(&items, 0.2, Some(5));
    assert_eq!((train.len(), val.len()), (8, 2));
    let mut all = [train.clone(), val.clone()].concat();
    all.sort();
    assert_eq!(all, items);
    assert_eq!(split_examples(&items, 0.2, Some(5)), (train.clone(), val));
    assert_ne!(split_examples(&items, 0.2, Some(6)).0, train);
    let mut rng = SplitMix64::new(5);
    let mut order = items.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    assert_eq!(
        [
            split_examples(&items, 0.2, Some(5)).0,
            split_examples(&items, 0.2, Some(5)).1
        ]
        .concat(),
        order
    );
    let sizes = |n: usize, f: f64| {
        let v: Vec<usize> = (0..n).collect();
        let (t, v) = split_examples(&v, f, Some(1));
        (t.len(), v.len())
    };
    assert_eq!(sizes(10, 0.01), (9, 1));
    assert_eq!(sizes(10, 0.0), (10, 0));
    assert_eq!(sizes(2, 0.5), (1, 1));
    assert_eq!(sizes(1, 0.5), (1, 0));
    assert_eq!(sizes(5, 1.0), (1, 4));
    assert_eq!(sizes(5, f64::NAN), (5, 0));
    assert_eq!(sizes(0, 0.1), (0, 0));
}

#[test]
fn token_id_examples_and_rows_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "ids.jsonl",
        "{\"input_ids\": [3, 1, 4, 1]}\n{\"input_ids\": [5]}\n{\"input_ids\": [2, -1]}\n",
    );
    let err = read_jsonl(&path).unwrap_err().to_string();
    assert!(
        err.contains("ids.jsonl:2") && err.contains("at least 2"),
        "{err}"
    );
    let path = write(dir.path(), "ok.jsonl", "{\"input_ids\": [3, 1, 4, 1]}\n");
    let examples = read_jsonl(&path).unwrap();
    assert_eq!(examples[0].example, Example::Tokens(vec![3, 1, 4, 1]));
    let path = write(dir.path(), "neg.jsonl", "{\"input_ids\": [2, -1]}\n");
    let err = read_jsonl(&path).unwrap_err().to_string();
    assert!(err.contains("\"input_ids\"[1] = -1"), "{err}");

    // Unshuffled: rows in order every epoch, the split keeps the file's order.
    let mut sampler = RowSampler::in_order();
    assert_eq!(sampler.next(3, 5), vec![0, 1, 2, 0, 1]);
    let items: Vec<u32> = (0..10).collect();
    assert_eq!(
        split_examples(&items, 0.2, None),
        ((0..8).collect(), vec![8, 9])
    );
}
