//! Abuse helper for the connection tests: opens `COUNT` TCP connections to `ADDR`, sends
//! nothing on them, prints `opened N failed M` once done, and holds them until its stdin
//! closes. A separate process so that a test can hold more sockets than one process may.
//!
//! Usage: `hold-sockets ADDR COUNT`

use std::io::{Read, Write};
use std::net::TcpStream;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(count)) = (args.next(), args.next()) else {
        eprintln!("usage: hold-sockets ADDR COUNT");
        std::process::exit(2);
    };
    let Ok(count) = count.parse::<usize>() else {
        eprintln!("COUNT must be a number, not {count:?}");
        std::process::exit(2);
    };
    // Connects from several threads: a connect whose SYN the kernel drops waits a second for
    // the retry, and those waits should overlap.
    const THREADS: usize = 8;
    let workers: Vec<_> = (0..THREADS)
        .map(|i| {
            let addr = addr.clone();
            let share = count / THREADS + usize::from(i < count % THREADS);
            std::thread::spawn(move || {
                let mut held = Vec::with_capacity(share);
                for _ in 0..share {
                    if let Ok(socket) = TcpStream::connect(&addr) {
                        held.push(socket);
                    }
                }
                held
            })
        })
        .collect();
    let held: Vec<TcpStream> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_default())
        .collect();
    let failed = count - held.len();
    println!("opened {} failed {failed}", held.len());
    let _ = std::io::stdout().flush();
    // Until the test closes our stdin (or dies).
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}
