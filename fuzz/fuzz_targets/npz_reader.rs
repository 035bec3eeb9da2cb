#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    paligemma_fuzz::harness::npz_reader(data);
});
