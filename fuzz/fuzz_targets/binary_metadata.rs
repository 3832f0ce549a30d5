#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connect_plugin_rpc::fuzzing::binary_metadata(data));
