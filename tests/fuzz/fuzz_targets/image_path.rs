//! Any bytes as an image: probe, decode (small limits, so the fuzzer explores formats rather
//! than allocations) and letterbox give pixels or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::vision::{self, ImageLimits, Letterboxer};

fuzz_target!(|data: &[u8]| {
    let limits = ImageLimits {
        max_bytes: 1 << 20,
        max_pixels: 4_000_000,
        max_side: 4096,
        max_decoded_pixels_in_flight: 4_000_000,
    };
    if let Ok(image) = vision::decode(data, &limits) {
        let mut tensor = Vec::new();
        let _ = Letterboxer::default().run(&image, 64, 64, &mut tensor);
    }
});
