//! Where the time of one shared frame goes: copy into a memfd, seal, map, unmap/free.
use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::Instant;

fn main() {
    let len: usize = std::env::args().nth(1).map_or(64 << 20, |s| s.parse().unwrap());
    let data = vec![7u8; len];
    let mut dst = vec![0u8; len];
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&data);
        let memcpy = t.elapsed();
        let t = Instant::now();
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING)
            .unwrap();
        let mut f = std::fs::File::from(fd);
        f.write_all(&data).unwrap();
        let write = t.elapsed();
        let fd = OwnedFd::from(f);
        let t = Instant::now();
        let map = unsafe { memmap2::MmapOptions::new().len(len).populate().map(&fd) }.unwrap();
        let mapt = t.elapsed();
        let t = Instant::now();
        drop(map);
        let unmap = t.elapsed();
        let t = Instant::now();
        drop(fd);
        let free = t.elapsed();
        println!("memcpy {memcpy:?} write {write:?} map {mapt:?} unmap {unmap:?} close/free {free:?}");
    }
}
