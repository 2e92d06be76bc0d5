//! Decode cost against input size, for the shapes an attacker would send:
//! one message of end-of-lines, one of tiny frames, and one large frame fed
//! one byte at a time. Time per byte staying flat as the size grows means
//! linear decoding.
//!
//! `cargo bench --bench decode` (release), or add `--profile dev` for a
//! quick look with the warm debug build.

use std::time::Instant;

use bizcall::stomp::frame::Decoder;

fn drain(d: &mut Decoder) -> usize {
    let mut n = 0;
    while let Ok(Some(_)) = d.next_item() {
        n += 1;
    }
    n
}

fn run(name: &str, size: usize, feed: impl Fn(&mut Decoder) -> usize) {
    let mut best = f64::MAX;
    let mut items = 0;
    for _ in 0..3 {
        let mut d = Decoder::new(usize::MAX / 2);
        let start = Instant::now();
        items = feed(&mut d);
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{name:<22} {:>6} KiB  {:>9.3} ms  {:>7.2} ns/byte  ({items} items)",
        size / 1024,
        best * 1e3,
        best * 1e9 / size as f64
    );
}

fn main() {
    for kib in [64, 256, 1024, 2048] {
        let size = kib * 1024;
        let eols = vec![b'\n'; size];
        run("EOLs, one message", size, |d| {
            d.push(&eols);
            drain(d)
        });
        let frame = b"ACK\nid:x\n\n\0";
        let tiny: Vec<u8> = frame.iter().copied().cycle().take(size).collect();
        run("tiny frames, one msg", size, |d| {
            d.push(&tiny);
            drain(d)
        });
        let mut big = b"SEND\ndestination:/x\n\n".to_vec();
        big.resize(size - 1, b'y');
        big.push(0);
        run("one frame, byte-wise", size, |d| {
            let mut n = 0;
            for b in &big {
                d.push(std::slice::from_ref(b));
                n += drain(d);
            }
            n
        });
    }
}
