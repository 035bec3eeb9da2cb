//! Memory read bandwidth: a streaming sum over a buffer much larger than the caches, on 1 and
//! 2 threads (or the counts given), best and median of several passes. Prints one JSON line.
//!
//! Usage: membw [--mib 1024] [--passes 7] [--threads 1,2] [--hugepages]
//! --hugepages asks for transparent huge pages (madvise) before the buffer is first touched, to
//! show what 2 MiB pages would buy a weight buffer (THP is often `madvise`-only).
//! The buffer must dwarf the last-level cache (300 MiB L3 on the Xeon dev box; 1 GiB default).

use std::hint::black_box;
use std::time::Instant;

fn sum(chunk: &[u64]) -> u64 {
    // 32 independent lanes (8 AVX2 registers): LLVM vectorises this, so the loop is load-bound.
    let mut acc = [0u64; 32];
    let mut it = chunk.chunks_exact(32);
    for c in &mut it {
        for i in 0..32 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    acc.iter().fold(it.remainder().iter().fold(0u64, |a, &b| a.wrapping_add(b)), |a, &b| a.wrapping_add(b))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let mib: usize = flag("--mib").map_or(1024, |s| s.parse().expect("--mib"));
    let passes: usize = flag("--passes").map_or(7, |s| s.parse().expect("--passes"));
    let threads: Vec<usize> =
        flag("--threads").unwrap_or_else(|| "1,2".into()).split(',').map(|s| s.parse().expect("--threads")).collect();
    let hugepages = args.iter().any(|a| a == "--hugepages");
    let words = mib * (1 << 20) / 8;
    let mut buf: Vec<u64> = Vec::with_capacity(words);
    if hugepages {
        // madvise wants a page-aligned start; malloc's large blocks start just past a header.
        let start = (buf.as_mut_ptr() as usize).div_ceil(4096) * 4096;
        let end = (buf.as_mut_ptr() as usize + words * 8) / 4096 * 4096;
        // SAFETY: advice on memory this Vec owns and has not touched yet.
        let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        assert_eq!(r, 0, "madvise(MADV_HUGEPAGE) failed: {}", std::io::Error::last_os_error());
    }
    // Non-zero contents, written once, so every page is really backed by memory.
    let fill = Instant::now();
    buf.extend((0..words as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let fill_gb_s = (words * 8) as f64 / fill.elapsed().as_secs_f64() / 1e9;
    let bytes = (words * 8) as f64;
    let mut results = Vec::new();
    for &n in &threads {
        let part = words.div_ceil(n);
        let mut gbps = Vec::new();
        for _ in 0..passes + 1 {
            let t = Instant::now();
            let total = std::thread::scope(|s| {
                let handles: Vec<_> = buf.chunks(part).map(|c| s.spawn(move || sum(black_box(c)))).collect();
                handles.into_iter().fold(0u64, |a, h| a.wrapping_add(h.join().unwrap()))
            });
            black_box(total);
            gbps.push(bytes / t.elapsed().as_secs_f64() / 1e9);
        }
        gbps.remove(0); // the first pass also warms the TLB and thread start-up
        let best = gbps.iter().cloned().fold(0.0, f64::max);
        results.push(format!(
            "{{\"threads\":{n},\"best_gb_s\":{best:.2},\"median_gb_s\":{:.2}}}",
            median(gbps.clone())
        ));
    }
    println!(
        "{{\"check\":\"membw\",\"buffer_mib\":{mib},\"passes\":{passes},\"hugepages\":{hugepages},\"first_touch_fill_gb_s\":{fill_gb_s:.2},\"results\":[{}]}}",
        results.join(",")
    );
}
