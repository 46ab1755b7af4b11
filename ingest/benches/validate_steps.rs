//! Where the CPU time of validating one photograph goes: sha256, JPEG decode, Pillow-style
//! grayscale, the Pillow-exact 32×32 Lanczos resize, the DCT. Run with
//! `cargo bench -p idforge-ingest --bench validate_steps`; under `cargo test --all-targets`
//! it runs one repetition as a smoke test.

use std::time::Instant;

use idforge_core::resample::{Filter, Plane8, resize};
use idforge_ingest::phash::{dct_low, pillow_luma};
use idforge_ingest::testkit::demo_photos;

fn main() {
    let reps = if std::env::args().any(|a| a == "--bench") {
        10
    } else {
        1
    };
    let photos = demo_photos().unwrap_or_else(|e| panic!("{e}"));
    let mut t = [0f64; 5];
    let names = ["sha256", "decode", "grayscale", "resize 32x32", "dct"];
    for _ in 0..reps {
        for (_, bytes) in &photos {
            let s = Instant::now();
            std::hint::black_box(idforge_core::hash::sha256_hex(bytes));
            t[0] += s.elapsed().as_secs_f64();
            let s = Instant::now();
            let d = idforge_core::image_io::decode(bytes, u64::MAX).unwrap();
            t[1] += s.elapsed().as_secs_f64();
            let s = Instant::now();
            let (w, h, data) = pillow_luma(&d.image);
            t[2] += s.elapsed().as_secs_f64();
            let s = Instant::now();
            let small = resize(
                &Plane8 {
                    width: w as usize,
                    height: h as usize,
                    channels: 1,
                    data,
                },
                32,
                32,
                Filter::Lanczos,
            );
            t[3] += s.elapsed().as_secs_f64();
            let s = Instant::now();
            let mut px = [0u8; 1024];
            px.copy_from_slice(&small.data);
            std::hint::black_box(dct_low(&px));
            t[4] += s.elapsed().as_secs_f64();
        }
    }
    let n = (reps * photos.len()) as f64;
    let total: f64 = t.iter().sum();
    println!("per 1920 px photograph (mean of {n}):");
    for (name, secs) in names.iter().zip(t) {
        println!(
            "  {name:<14} {:>7.2} ms  {:>4.0} %",
            secs / n * 1e3,
            100.0 * secs / total
        );
    }
    println!("  {:<14} {:>7.2} ms", "total", total / n * 1e3);
}
