//! Tests that need no network-sized files: the tiny tokenizer, loading errors, task prefixes
//! and stop strings.

use super::*;

// ---- the tiny tokenizer ----

#[test]
fn tiny_tokenizer_fits_the_tiny_fixtures() {
    let tok = tiny();
    assert_eq!(tok.vocab_size(), 512);
    for (id, token) in [
        (0, "<pad>"),
        (1, "<eos>"),
        (2, "<bos>"),
        (108, "\n"),
        (500, "<image>"),
    ] {
        assert_eq!(tok.id_to_token(id).as_deref(), Some(token));
    }
    assert!(tok.is_special(500));
    for name in ["pg1-tiny-a", "pg2-tiny-a"] {
        let dir = format!("reference/{name}");
        let config = Config::from_dir(&repo().join("testdata").join(&dir)).unwrap();
        tok.check_against(&config).unwrap();
        let ids = tok.build_prompt_for(&config, "caption en").unwrap();
        assert_eq!(&ids[..17], [[500u32; 16].as_slice(), &[2]].concat());
        assert_eq!(tok.decode(&ids).unwrap(), "caption en\n");
        let generated = id_list(&meta(&dir)["generated_ids"]);
        let text = tok.decode(&generated).unwrap();
        assert!(text.starts_with("\n\n"), "{name}: {text:?}");
        assert_eq!(stream_pieces(&tok, &generated).concat(), text);
    }
}

#[test]
fn tiny_tokenizer_byte_fallback() {
    let tok = tiny();
    let text = "a café → 日本語 🦀";
    let ids = tok.encode_text(text).unwrap();
    assert!(ids
        .iter()
        .any(|&i| tok.id_to_token(i).is_some_and(|t| t.starts_with("<0x"))));
    assert_eq!(stream_pieces(&tok, &ids).concat(), text);
    assert_eq!(tok.inner().decode(&ids, true).unwrap(), text);
}

#[test]
fn tiny_tokenizer_file_is_up_to_date() {
    let out = scratch_dir("tiny").join("tokenizer.json");
    let status = std::process::Command::new("node")
        .arg(repo().join("scripts/make-tiny-tokenizer.mjs"))
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run node (needed by this test; CI installs it): {e}"));
    assert!(status.success());
    let committed = std::fs::read_to_string(repo().join("testdata/tokenizers/tiny/tokenizer.json"));
    assert_eq!(
        std::fs::read_to_string(out).unwrap(),
        committed.unwrap(),
        "rerun `node scripts/make-tiny-tokenizer.mjs`"
    );
}

// ---- loading errors ----

#[test]
fn missing_and_malformed_tokenizer_files() {
    let empty = scratch_dir("empty");
    let _ = std::fs::remove_file(empty.join("tokenizer.json"));
    let msg = tokenizer_message(PromptTokenizer::from_dir(&empty).unwrap_err());
    assert!(
        msg.contains("no tokenizer.json in") && msg.contains("empty"),
        "{msg}"
    );

    let bad = scratch_dir("malformed");
    std::fs::write(
        bad.join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": ",
    )
    .unwrap();
    let msg = tokenizer_message(PromptTokenizer::from_dir(&bad).unwrap_err());
    assert!(
        msg.contains("malformed/tokenizer.json") && msg.contains("not a valid"),
        "{msg}"
    );

    let msg = tokenizer_message(PromptTokenizer::from_file(&bad.join("nope.json")).unwrap_err());
    assert!(msg.contains("nope.json"), "{msg}");
    tokenizer_message(PromptTokenizer::from_json_str("{}").unwrap_err());
}

#[test]
fn added_token_ids_must_be_consistent() {
    let path = repo().join("testdata/tokenizers/tiny/tokenizer.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let token = serde_json::json!({"id": 600, "content": "<gap>", "single_word": false,
        "lstrip": false, "rstrip": false, "normalized": false, "special": false});
    json["added_tokens"].as_array_mut().unwrap().push(token);
    let msg = tokenizer_message(PromptTokenizer::from_json_str(&json.to_string()).unwrap_err());
    assert!(
        msg.contains("<gap>") && msg.contains("600") && msg.contains("512"),
        "{msg}"
    );
}

#[test]
fn extending_rejects_non_gemma_input() {
    let tiny = std::fs::read_to_string(repo().join("testdata/tokenizers/tiny/tokenizer.json"));
    let msg = tokenizer_message(extend_gemma_tokenizer(&tiny.unwrap()).unwrap_err());
    assert!(msg.contains("256000"), "{msg}");
    tokenizer_message(extend_gemma_tokenizer("not json").unwrap_err());
}

// ---- pure helpers ----

#[test]
fn task_prefixes() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(Task::Caption { lang: "en".into() }.prefix(), "caption en");
    assert_eq!(Task::Describe { lang: "de".into() }.prefix(), "describe de");
    let q = Task::Answer {
        lang: "en".into(),
        question: "Where is the cow?".into(),
    };
    assert_eq!(q.prefix(), "answer en Where is the cow?");
    assert_eq!(Task::Ocr.prefix(), "ocr");
    assert_eq!(
        Task::Detect {
            objects: s(&["cat", "dog"])
        }
        .prefix(),
        "detect cat ; dog"
    );
    assert_eq!(
        Task::Segment {
            objects: s(&["cat"])
        }
        .to_string(),
        "segment cat"
    );
}

fn feed(stops: &mut StopMatcher, pieces: &[&str]) -> (Vec<String>, Option<(String, usize)>) {
    let mut shown = Vec::new();
    for p in pieces {
        match stops.push(p) {
            StopEvent::Text(t) => shown.push(t),
            StopEvent::Stop { text, index } => return (shown, Some((text, index))),
        }
    }
    (shown, None)
}

#[test]
fn stop_text_is_excluded_and_prefixes_are_held() {
    let mut m = StopMatcher::new(["<end>"]).unwrap();
    let (shown, stop) = feed(&mut m, &["Hello wor", "ld <e", "nd> more"]);
    assert_eq!(shown, ["Hello wor", "ld "]);
    assert_eq!(stop, Some(("".to_string(), 0)));
    assert!(m.is_stopped());
    assert_eq!(m.push("ignored"), StopEvent::Text(String::new()));

    // A held prefix that turns out not to be a stop string is released.
    let mut m = StopMatcher::new(["STOP"]).unwrap();
    let (shown, stop) = feed(&mut m, &["a ST", "A", "RT ST"]);
    assert_eq!(
        (shown, stop),
        (vec!["a ".to_string(), "STA".into(), "RT ".into()], None)
    );
    assert_eq!(m.finish(), "ST");
}

#[test]
fn multiple_stop_strings_and_chunking() {
    let stops = ["\n\n", "###", "abcd", "bc"];
    let mut m = StopMatcher::new(stops).unwrap();
    assert_eq!(
        feed(&mut m, &["one\n", "two##", "#x"]),
        (vec!["one".into(), "\ntwo".into()], Some(("".into(), 1)))
    );
    let mut m = StopMatcher::new(stops).unwrap();
    assert_eq!(
        feed(&mut m, &["x\n", "\ny"]),
        (vec!["x".into()], Some(("".into(), 0)))
    );
    // The stop that completes first wins, however the text is split.
    let mut m = StopMatcher::new(stops).unwrap();
    assert_eq!(feed(&mut m, &["xabcd"]).1, Some(("xa".into(), 3)));
    let mut m = StopMatcher::new(stops).unwrap();
    let chars: Vec<String> = "xabcd".chars().map(String::from).collect();
    let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
    let (shown, stop) = feed(&mut m, &chars);
    assert_eq!(shown.concat() + &stop.as_ref().unwrap().0, "xa");
    assert_eq!(stop.unwrap().1, 3);
    // Multi-byte text: held suffixes start on character boundaries.
    let mut m = StopMatcher::new(["ว่าว่า"]).unwrap();
    assert_eq!(
        feed(&mut m, &["éว่", "าx"]),
        (vec!["é".into(), "ว่าx".into()], None)
    );
}

#[test]
fn stop_matcher_edge_cases() {
    match StopMatcher::new(["ok", ""]) {
        Err(Error::InvalidArgument { name, .. }) => assert_eq!(name, "stop"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let mut none = StopMatcher::new(Vec::<String>::new()).unwrap();
    assert_eq!(none.push("anything"), StopEvent::Text("anything".into()));
    let mut m = StopMatcher::new(["abc"]).unwrap();
    assert_eq!(m.push("xxab"), StopEvent::Text("xx".into()));
    assert_eq!(m.finish(), "ab");
    assert_eq!(
        m.push("abc"),
        StopEvent::Stop {
            text: "".into(),
            index: 0
        }
    );
}
