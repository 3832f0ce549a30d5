#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connect_plugin_rpc::fuzzing::gzip_limit(data));
