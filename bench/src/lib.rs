//! Benchmarks live in `benches/plugin_calls.rs`; run them with `cargo bench -p connect-plugin-bench`.
