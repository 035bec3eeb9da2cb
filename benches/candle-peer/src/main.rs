//! candle-transformers' own PaliGemma (`candle_transformers::models::paligemma`) as a benchmark
//! peer: the same Hub-layout checkpoint folder, the same prompt (256 image embeddings, <bos>, the
//! nine text ids of benches/peers/transformers_peer.py) and the same synthetic pixels as the other
//! peers, f32 on the CPU. Prints one JSON line shaped like the other peers'.
//!
//! candle's model differs from HF numerically (it L2-normalises the image features and feeds the
//! image+text prefix without a mask); only its speed is compared. PaliGemma 1 (Gemma decoder)
//! only: candle-transformers has no PaliGemma 2.
//!
//! Usage: candle-peer --model <dir> [--new-tokens 32] [--runs 3] [--warmup 1]
//! Threads: RAYON_NUM_THREADS / CANDLE_NUM_THREADS, as for any candle program.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::{gemma, paligemma, siglip};
use serde_json::Value;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

const TEXT_IDS: [u32; 9] = [21209, 659, 4401, 603, 476, 2204, 576, 573, 108];

fn main() {
    if let Err(e) = run() {
        eprintln!("candle-peer: {e}");
        std::process::exit(1);
    }
}

fn get_usize(v: &Value, key: &str, default: Option<usize>) -> AnyResult<usize> {
    match v.get(key).and_then(Value::as_u64) {
        Some(x) => Ok(x as usize),
        None => default.ok_or_else(|| format!("config.json: missing {key}").into()),
    }
}

fn get_f64(v: &Value, key: &str, default: f64) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(default)
}

/// candle's `Config` from a Hub `config.json`, with the HF class defaults for omitted fields
/// (for the released PaliGemma-3B-224 this equals `paligemma::Config::paligemma_3b_224()`).
fn config_from_json(json: &Value) -> AnyResult<(paligemma::Config, u32, u32, usize)> {
    let t = &json["text_config"];
    let v = &json["vision_config"];
    let text_type = t.get("model_type").and_then(Value::as_str).unwrap_or("gemma");
    if text_type != "gemma" {
        return Err(format!("candle-transformers' PaliGemma supports only the Gemma decoder (PaliGemma 1), not `{text_type}`").into());
    }
    let vocab_size = get_usize(t, "vocab_size", json.get("vocab_size").and_then(Value::as_u64).map(|x| x as usize))?;
    let rope_theta = t
        .get("rope_parameters")
        .and_then(|r| r.get("rope_theta"))
        .and_then(Value::as_f64)
        .unwrap_or_else(|| get_f64(t, "rope_theta", 10000.0));
    let text_config = gemma::Config {
        attention_bias: t.get("attention_bias").and_then(Value::as_bool).unwrap_or(false),
        head_dim: get_usize(t, "head_dim", Some(256))?,
        hidden_act: Some(candle_nn::Activation::GeluPytorchTanh),
        hidden_activation: None,
        hidden_size: get_usize(t, "hidden_size", Some(2048))?,
        intermediate_size: get_usize(t, "intermediate_size", Some(16384))?,
        num_attention_heads: get_usize(t, "num_attention_heads", Some(8))?,
        num_hidden_layers: get_usize(t, "num_hidden_layers", Some(18))?,
        num_key_value_heads: get_usize(t, "num_key_value_heads", Some(1))?,
        rms_norm_eps: get_f64(t, "rms_norm_eps", 1e-6),
        rope_theta,
        vocab_size,
        max_position_embeddings: get_usize(t, "max_position_embeddings", Some(8192))?,
    };
    let vision_config = siglip::VisionConfig {
        hidden_size: get_usize(v, "hidden_size", Some(1152))?,
        intermediate_size: get_usize(v, "intermediate_size", Some(4304))?,
        num_hidden_layers: get_usize(v, "num_hidden_layers", Some(27))?,
        num_attention_heads: get_usize(v, "num_attention_heads", Some(16))?,
        num_channels: get_usize(v, "num_channels", Some(3))?,
        image_size: get_usize(v, "image_size", Some(224))?,
        patch_size: get_usize(v, "patch_size", Some(14))?,
        hidden_act: candle_nn::Activation::GeluPytorchTanh,
        layer_norm_eps: get_f64(v, "layer_norm_eps", 1e-6),
    };
    let projection_dim = get_usize(json, "projection_dim", Some(get_usize(v, "projection_dim", Some(2048))?))?;
    let image_size = vision_config.image_size;
    let bos = json.get("bos_token_id").and_then(Value::as_u64).unwrap_or(2) as u32;
    Ok((paligemma::Config { vision_config, text_config, projection_dim }, bos, vocab_size as u32, image_size))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (peak RSS in MB, CPU seconds) of this process, from /proc.
fn proc_stats() -> (f64, f64) {
    let hwm_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .unwrap_or(0.0);
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the ")" closing the command name: utime is the 12th, stime the 13th.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0);
    (hwm_kb / 1024.0, cpu)
}

fn argmax(logits: &Tensor) -> AnyResult<u32> {
    Ok(logits.flatten_all()?.argmax(D::Minus1)?.to_scalar::<u32>()?)
}

fn run() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let dir = PathBuf::from(flag("--model").ok_or("--model <dir> is required")?);
    let new_tokens: usize = flag("--new-tokens").map_or(Ok(32), |s| s.parse())?;
    let runs: usize = flag("--runs").map_or(Ok(3), |s| s.parse())?;
    let warmup: usize = flag("--warmup").map_or(Ok(1), |s| s.parse())?;
    if new_tokens < 2 {
        return Err("--new-tokens must be at least 2".into());
    }

    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let (config, bos, vocab, r) = config_from_json(&json)?;
    let device = Device::Cpu;
    let dtype = DType::F32;

    let t0 = Instant::now();
    let mut files = vec![dir.join("model.safetensors")];
    if !files[0].exists() {
        let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json"))?)?;
        let mut shards: Vec<String> =
            index["weight_map"].as_object().ok_or("bad index")?.values().filter_map(|v| v.as_str().map(String::from)).collect();
        shards.sort();
        shards.dedup();
        files = shards.into_iter().map(|s| dir.join(s)).collect();
    }
    // SAFETY: the checkpoint is not modified while it is mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, &device)? };
    let mut model = paligemma::Model::new(&config, vb)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;

    // Same prompt as the other peers: candle's `setup` prepends the image embeddings itself, so
    // it gets <bos> + the text ids (266 positions at 224 px, like the others' 256 + 1 + 9).
    let mut text: Vec<u32> = vec![bos];
    text.extend(TEXT_IDS.iter().map(|id| id % vocab));
    let input_ids = Tensor::new(text.as_slice(), &device)?.unsqueeze(0)?;
    let pixels: Vec<f32> = (0..3 * r * r).map(|i| ((i * 7) % 255) as f32 / 127.5 - 1.0).collect();
    let pixel_values = Tensor::from_vec(pixels, (1, 3, r, r), &device)?;

    // One pass per run: the first token's time is TTFT (setup = vision + projector + prefill,
    // then argmax), the rest is decode.
    let mut generate = |n: usize| -> AnyResult<(f64, f64, Vec<u32>)> {
        let t = Instant::now();
        let logits = model.setup(&pixel_values, &input_ids)?;
        let mut token = argmax(&logits)?;
        let first = t.elapsed().as_secs_f64() * 1e3;
        let mut out = vec![token];
        for _ in 1..n {
            let input = Tensor::new(&[token], &device)?.unsqueeze(0)?;
            let logits = model.forward(&input)?;
            token = argmax(&logits)?;
            out.push(token);
        }
        let total = t.elapsed().as_secs_f64() * 1e3;
        Ok((first, total, out))
    };
    for _ in 0..warmup {
        generate(2)?;
    }
    let (mut ttft, mut decode, mut last) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (first, total, out) = generate(new_tokens)?;
        ttft.push(first);
        decode.push((total - first) / (new_tokens - 1) as f64);
        last = out;
    }
    let (rss_mb, cpu_s) = proc_stats();
    let d = median(decode.clone());
    let round = |x: f64, p: i32| (x * 10f64.powi(p)).round() / 10f64.powi(p);
    let line = serde_json::json!({
        "engine": "candle-transformers",
        "model": dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        "device": "cpu", "dtype": "f32", "batch": 1,
        "load_ms": round(load_ms, 1),
        "ttft_ms": round(median(ttft.clone()), 2),
        "decode_ms_per_token": round(d, 3),
        "tokens_per_s": round(1e3 / d, 2),
        "peak_rss_mb": round(rss_mb, 1),
        "cpu_s": round(cpu_s, 2),
        "new_tokens": new_tokens, "runs": runs, "warmup": warmup,
        "ttft_runs_ms": ttft.iter().map(|x| round(*x, 1)).collect::<Vec<_>>(),
        "decode_runs_ms": decode.iter().map(|x| round(*x, 2)).collect::<Vec<_>>(),
        "first_tokens": last.iter().take(8).collect::<Vec<_>>(),
        "threads": std::env::var("RAYON_NUM_THREADS").ok().and_then(|t| t.parse::<usize>().ok()),
        "versions": {"candle": "0.11.1"},
    });
    println!("{line}");
    Ok(())
}
