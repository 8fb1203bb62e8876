//! Writes the fuzz corpus's seeds (real encodings) into `<dir>/<target>/seed-*`:
//! `cargo run -p starling-fuzz-targets --bin fuzz-seeds -- fuzz/corpus`.

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into());
    let mut n = 0;
    for (target, name, bytes) in starling_fuzz_targets::seeds::all() {
        let d = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)?;
        n += 1;
    }
    println!("{n} seeds written under {dir}");
    Ok(())
}
