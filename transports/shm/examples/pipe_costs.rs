//! One copy through a pipe: vmsplice the sender's pages, read() into a reused buffer.
use std::time::Instant;

fn main() {
    let len: usize = std::env::args().nth(1).map_or(64 << 20, |s| s.parse().unwrap());
    let psize: usize = std::env::args().nth(2).map_or(1 << 20, |s| s.parse().unwrap());
    let data = vec![7u8; len];
    let (r, w) = rustix::pipe::pipe().unwrap();
    let got = rustix::pipe::fcntl_setpipe_size(&w, psize).unwrap();
    println!("pipe size {got}");
    let mut dst = vec![1u8; len];
    for _ in 0..6 {
        let t = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut off = 0;
                while off < len {
                    let iov = [rustix::pipe::IoSliceRaw::from_slice(&data[off..])];
                    let n = unsafe { rustix::pipe::vmsplice(&w, &iov, rustix::pipe::SpliceFlags::empty()) }.unwrap();
                    off += n;
                }
            });
            let mut off = 0;
            while off < len {
                off += rustix::io::read(&r, &mut dst[off..]).unwrap();
            }
        });
        let e = t.elapsed();
        println!("{:?} {:.2} GiB/s", e, len as f64 / e.as_secs_f64() / (1u64 << 30) as f64);
    }
    let t = Instant::now();
    dst.copy_from_slice(&data);
    println!("memcpy {:?}", t.elapsed());
}
