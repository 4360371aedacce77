//! Any bytes as a frame, in both encodings: decoding either gives a frame or an error, and a
//! decoded frame is validated; error texts stay bounded whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::contract::{self, Encoding};

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::Msgpack, Encoding::Json] {
        match encoding.decode_frame(data) {
            Ok(frame) => {
                let _ = contract::validate_frame(&frame, chrono::Utc::now(), chrono::Duration::hours(1));
                // What vigil quotes of a frame stays small.
                assert!(contract::excerpt(&frame.frame_id, 160).len() < 200);
            }
            Err(e) => {
                assert!(contract::bounded(&e.to_string()).len() <= contract::MAX_EXCERPT_CHARS + 32);
            }
        }
    }
});
