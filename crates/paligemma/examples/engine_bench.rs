//! Device checks and timings for the engine itself, used by `scripts/gpu-check.sh` and the CPU
//! benchmark harness. Subcommands:
//!
//! - `random-checkpoint <preset> <out-dir> [f32|bf16] [seed]` — a random-weight checkpoint with
//!   the real shapes of a released model (Hub tensor names, so transformers loads it too).
//! - `parity <fixture-dir> <cpu|cuda> <f32|bf16>` — the reference checks on any device.
//! - `bench <model-dir> <cpu|cuda> <f32|f16|bf16> <batch> <new-tokens> <runs>` — load time,
//!   time to first token and decode ms/token (medians), printed as one JSON line.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use paligemma::config::{preset_json, Config};
use paligemma::{generate, generate_batch, Control, GenerateRequest, LoadOptions, PaliGemma, SamplingParams};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("random-checkpoint") => random_checkpoint(&args[1..]),
        Some("parity") => parity(&args[1..]),
        Some("bench") => bench(&args[1..]),
        _ => Err("usage: engine_bench random-checkpoint|parity|bench …".into()),
    };
    if let Err(e) = result {
        eprintln!("engine_bench: {e}");
        std::process::exit(1);
    }
}

/// The device and dtype as the Node binding chooses them (`paligemma::device`), so the GPU
/// check runs the addon's selection too.
fn placement(device: &str, dtype: &str) -> AnyResult<(Device, DType)> {
    let chosen = paligemma::choose_device(device.parse()?)?;
    if let Some(why) = &chosen.fallback {
        eprintln!("engine_bench: {why}");
    }
    let (dtype, _) = paligemma::choose_precision(Some(dtype), &chosen.device)?;
    Ok((chosen.device, dtype))
}

/// Hub names, the inverse of `weights::canonical_name`.
fn hub_name(canonical: &str) -> String {
    if let Some(rest) = canonical.strip_prefix("vision_tower.") {
        format!("vision_tower.vision_model.{rest}")
    } else if let Some(rest) = canonical.strip_prefix("language_model.") {
        format!("language_model.model.{rest}")
    } else {
        canonical.to_string()
    }
}

fn random_checkpoint(args: &[String]) -> AnyResult<()> {
    let [preset, out, rest @ ..] = args else { return Err("random-checkpoint <preset> <out-dir> [f32|bf16] [seed]".into()) };
    let bf16 = rest.first().map(String::as_str) == Some("bf16");
    let seed: u64 = rest.get(1).map_or(Ok(1), |s| s.parse())?;
    let json = preset_json(preset)?;
    let config = Config::from_json(&json)?;
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&json)?)?;
    let manifest = config.tensor_manifest();
    let width = if bf16 { 2 } else { 4 };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for spec in &manifest {
        let bytes = spec.numel() * width;
        header.insert(
            hub_name(&spec.name),
            serde_json::json!({"dtype": if bf16 { "BF16" } else { "F32" }, "shape": spec.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut header = serde_json::to_string(&header)?.into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut file = BufWriter::with_capacity(1 << 22, std::fs::File::create(out.join("model.safetensors"))?);
    file.write_all(&(header.len() as u64).to_le_bytes())?;
    file.write_all(&header)?;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = Vec::new();
    for spec in &manifest {
        // Norm scales and biases start at zero, matrices at std ≈ 0.02 (uniform): random
        // weights cost the same to run as real ones.
        let zero = spec.shape.len() == 1;
        buf.clear();
        for _ in 0..spec.numel() {
            let v = if zero {
                0.0f32
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.0693
            };
            if bf16 {
                buf.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
            } else {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        file.write_all(&buf)?;
    }
    file.flush()?;
    println!("wrote {} ({} tensors, {:.2} GB)", out.display(), manifest.len(), offset as f64 / 1e9);
    Ok(())
}

fn load_tensors(path: &Path) -> AnyResult<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(path, &Device::Cpu)?)
}

fn ids(t: &Tensor) -> AnyResult<Vec<u32>> {
    Ok(t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?.into_iter().map(|v| v as u32).collect())
}

fn max_diff(a: &Tensor, b: &Tensor) -> AnyResult<f32> {
    let a = a.flatten_all()?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max))
}

fn parity(args: &[String]) -> AnyResult<()> {
    let [dir, dev, dt] = args else { return Err("parity <fixture-dir> <cpu|cuda> <f32|bf16>".into()) };
    let dir = PathBuf::from(dir);
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (device, dtype) = placement(dev, dt)?;
    let options = LoadOptions { device, dtype, ..Default::default() };
    let model = PaliGemma::load(&dir, &options)?;
    let inputs = load_tensors(&dir.join("inputs.safetensors"))?;
    let input_ids = ids(&inputs["input_ids"])?;
    let pixels = inputs["pixel_values"].flatten_all()?.to_vec1::<f32>()?;
    let expected_file = if dt == "f32" { "expected.safetensors" } else { "expected_bf16.safetensors" };
    let expected = load_tensors(&dir.join(expected_file))?;
    let generated = ids(expected.get("generated_ids").unwrap_or(&inputs["generated_ids"]))?;
    let prefill = max_diff(&model.forward(&input_ids, &pixels)?, &expected["prefill_logits"])?;
    // Teacher-forced decode steps in the session's default mode (a CUDA graph on CUDA) against
    // the reference's per-step logits (f32 only: the bf16 reference has none).
    let step_reference = if dt == "f32" { expected.get("generation_step_logits") } else { None };
    let (steps_diff, graph) = match step_reference {
        Some(reference) => {
            let rows = reference.dim(0)?;
            let mut session = model.new_session(input_ids.len() + rows)?;
            let mut logits = vec![model.prefill(&mut session, &input_ids, &pixels)?];
            for &id in &generated[..rows - 1] {
                logits.push(model.step(&mut session, id)?);
            }
            if let Some(e) = session.graph_error() {
                eprintln!("graph capture failed: {e}");
            }
            (max_diff(&Tensor::stack(&logits, 0)?, reference)?, session.graph_captured())
        }
        None => (0.0, false),
    };
    let request = GenerateRequest {
        input_ids,
        pixel_values: pixels,
        max_new_tokens: generated.len(),
        sampling: SamplingParams::default(),
        stop_token_ids: vec![],
        ignore_eos: true,
        sliding_window: false,
    };
    let out = generate(&model, &request, &mut |_| Control::Continue, &|| false)?;
    let ids_match = out.token_ids == generated;
    let ok = ids_match && (dt != "f32" || (prefill <= 1e-4 && steps_diff <= 1e-4));
    println!(
        "{{\"check\":\"parity\",\"fixture\":\"{name}\",\"device\":\"{dev}\",\"dtype\":\"{dt}\",\"prefill_maxdiff\":{prefill:e},\"steps_maxdiff\":{steps_diff:e},\"graph\":{graph},\"ids\":\"{}\",\"ok\":{ok}}}",
        if ids_match { "match" } else { "MISMATCH" }
    );
    if ok {
        Ok(())
    } else {
        Err(format!("parity failed for {name} on {dev} {dt}").into())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct StepProfile {
    mode: paligemma::StepMode,
    graph: bool,
    /// The first decode step (on CUDA: the warm-up that runs kernel by kernel).
    first_ms: f64,
    /// The second (on CUDA: graph capture plus its first launch).
    second_ms: f64,
    /// Median of the rest.
    steady_ms: f64,
    /// Vision tower and projector for the batch's images.
    vision_ms: f64,
}

/// Times each decode step of one greedy batch on its own, each ending with the chosen ids on
/// the host (as the generation loop does), to show what a graph capture costs and saves.
fn step_profile(model: &PaliGemma, requests: &[GenerateRequest], new_tokens: usize) -> AnyResult<StepProfile> {
    let prompts: Vec<&[u32]> = requests.iter().map(|r| r.input_ids.as_slice()).collect();
    let images: Vec<&[f32]> = requests.iter().map(|r| r.pixel_values.as_slice()).collect();
    // One bucket above the timed runs' capacity: a fresh session, so that the first steps show
    // the warm-up and the capture rather than a pooled graph.
    let capacity = prompts[0].len() + new_tokens.max(4) + paligemma::decode_step::CAPACITY_STEP;
    let mut session = model.new_batch_session(requests.len(), capacity)?;
    let mut logits = model.prefill_batch(&mut session, &prompts, &images)?;
    let mut times = Vec::new();
    for _ in 0..new_tokens.max(4) - 1 {
        let ids = logits.argmax(1)?.to_vec1::<u32>()?;
        let t = Instant::now();
        logits = model.step_batch(&mut session, &ids)?;
        logits.argmax(1)?.to_vec1::<u32>()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    if let Some(e) = session.graph_error() {
        eprintln!("graph capture failed: {e}");
    }
    // The vision tower and projector alone (the rest of the time to first token is the decoder's
    // prefill): the median of three, each ending in a host read so a GPU has finished.
    let pixels = model.pixel_batch(&images)?;
    let mut vision = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        model.image_features(&pixels)?.flatten_all()?.narrow(0, 0, 1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        vision.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(StepProfile {
        mode: session.step_mode,
        graph: session.graph_captured(),
        first_ms: times[0],
        second_ms: times[1],
        steady_ms: median(times[2..].to_vec()),
        vision_ms: median(vision),
    })
}

fn bench(args: &[String]) -> AnyResult<()> {
    let [dir, dev, dt, batch, new_tokens, runs] = args else {
        return Err("bench <model-dir> <cpu|cuda> <f32|f16|bf16> <batch> <new-tokens> <runs>".into());
    };
    let (batch, new_tokens, runs): (usize, usize, usize) = (batch.parse()?, new_tokens.parse()?, runs.parse()?);
    let (device, dtype) = placement(dev, dt)?;
    let options = LoadOptions { device, dtype, ..Default::default() };
    let t0 = Instant::now();
    let model = PaliGemma::load(Path::new(dir), &options)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let config = model.config();
    let r = config.vision.image_size;
    // The image tokens, <bos>, eight text ids and "\n": a typical short task prompt.
    let mut input_ids = vec![config.image_token_id; config.num_image_tokens()];
    let vocab = config.text.vocab_size as u32;
    input_ids.push(config.bos_token_id);
    input_ids.extend([21209u32, 659, 4401, 603, 476, 2204, 576, 573, 108].map(|id| id % vocab));
    // BENCH_TEMPERATURE=1 times sampled decoding (top-p 0.9) instead of greedy.
    let temperature: f64 = std::env::var("BENCH_TEMPERATURE").ok().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let sampling = SamplingParams { temperature, top_p: if temperature > 0.0 { 0.9 } else { 1.0 }, seed: 1, ..Default::default() };
    let requests: Vec<GenerateRequest> = (0..batch)
        .map(|b| GenerateRequest {
            input_ids: input_ids.clone(),
            pixel_values: (0..3 * r * r).map(|i| (((i * 7 + b * 13) % 255) as f32 / 127.5) - 1.0).collect(),
            max_new_tokens: new_tokens,
            sampling: sampling.clone(),
            stop_token_ids: vec![],
            ignore_eos: true,
            sliding_window: false,
        })
        .collect();
    let run = |max_new: usize| -> AnyResult<(f64, f64, usize)> {
        let reqs: Vec<GenerateRequest> = requests.iter().map(|q| GenerateRequest { max_new_tokens: max_new, ..q.clone() }).collect();
        let t = Instant::now();
        let outs = if batch == 1 {
            vec![generate(&model, &reqs[0], &mut |_| Control::Continue, &|| false)?]
        } else {
            generate_batch(&model, &reqs, &|| false)?
        };
        let total = t.elapsed().as_secs_f64() * 1e3;
        Ok((total, outs[0].timings.prefill_ms, outs[0].token_ids.len()))
    };
    run(2)?; // warm-up: PTX JIT, cuBLAS handles, allocator
    let mut ttft = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..runs {
        let (_, first_token_ms, _) = run(1)?;
        ttft.push(first_token_ms);
        let (total, first, n) = run(new_tokens)?;
        decode.push((total - first) / (n.saturating_sub(1).max(1)) as f64);
    }
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(",");
    let runs_json = format!("\"ttft_runs_ms\":[{}],\"decode_runs_ms\":[{}]", list(&ttft), list(&decode));
    let (ttft, decode) = (median(ttft), median(decode));
    let steps = step_profile(&model, &requests, new_tokens)?;
    println!(
        "{{\"engine\":\"paligemma\",\"model\":\"{}\",\"device\":\"{dev}\",\"dtype\":\"{dt}\",\"batch\":{batch},\"load_ms\":{load_ms:.1},\"ttft_ms\":{ttft:.2},\"decode_ms_per_token\":{decode:.3},\"tokens_per_s\":{:.1},\"step_mode\":\"{:?}\",\"temperature\":{temperature},\"graph\":{},\"first_step_ms\":{:.3},\"second_step_ms\":{:.3},\"steady_step_ms\":{:.3},\"vision_ms\":{:.2},\"mempool\":\"{}\",{runs_json}}}",
        Path::new(dir).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        batch as f64 * 1e3 / decode,
        steps.mode,
        steps.graph,
        steps.first_ms,
        steps.second_ms,
        steps.steady_ms,
        steps.vision_ms,
        // device_memory: the CUDA pool releases freed memory unless PALIGEMMA_CUDA_MEMPOOL=keep.
        if std::env::var("PALIGEMMA_CUDA_MEMPOOL").is_ok_and(|v| v == "keep") { "keep" } else { "release" },
    );
    Ok(())
}
