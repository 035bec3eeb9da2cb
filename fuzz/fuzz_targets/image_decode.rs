#![no_main]

use libfuzzer_sys::fuzz_target;

// `paligemma::image` turns a panic inside a third-party codec into an error (catch_unwind), but
// libFuzzer's panic hook aborts on every panic, so such codec bugs still surface as crashes.
fuzz_target!(|data: &[u8]| {
    paligemma_fuzz::harness::image_decode(data);
});
