//! `courier submit`: one task from the command line, its result printed. Plain values print
//! as JSON; an n-d array prints as a summary and can be written whole as `.npy`.

use std::path::PathBuf;

use anyhow::Context as _;
use courier::courier_core::{DType, Element, Payload, WireArray};
use courier::courier_runtime::{Client, arg};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The scheduler's URL.
    scheduler: String,
    /// The function to run.
    function: String,
    /// Its arguments, as JSON values (a bare word is a string); `@FILE.npy` passes the array
    /// in a NumPy file.
    args: Vec<String>,
    /// Write an array result to this file in NumPy's .npy format.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) async fn run(args: Args, registry: courier::Registry) -> anyhow::Result<()> {
    let client = Client::connect(registry, &args.scheduler).await?;
    let mut task_args = Vec::with_capacity(args.args.len());
    for a in &args.args {
        task_args.push(match a.strip_prefix('@') {
            Some(path) => {
                let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
                arg(&crate::npy::read(&bytes).with_context(|| format!("reading {path}"))?)
            }
            None => {
                let v = serde_json::from_str(a).unwrap_or_else(|_| serde_json::Value::String(a.clone()));
                arg::<serde_json::Value>(&v)
            }
        });
    }
    let future = client.submit::<()>(&args.function, task_args).await?;
    let payload = future.payload().await?;
    let text = render(&payload, args.out.as_deref())?;
    println!("{text}");
    client.close().await;
    Ok(())
}

/// How a result prints: JSON for plain values, a summary for arrays.
pub(crate) fn render(payload: &Payload, out: Option<&std::path::Path>) -> anyhow::Result<String> {
    if payload.frames.is_empty() {
        if out.is_some() {
            anyhow::bail!("--out writes array results; this result is a plain value");
        }
        let v: serde_json::Value = payload.decode().context("decoding the result")?;
        return Ok(v.to_string());
    }
    let array: WireArray = payload
        .decode()
        .context("the result carries binary buffers but is not an n-d array; write a client that knows its type")?;
    let (c_bytes, stats) = flatten(&array)?;
    let mut text = format!(
        "array {} shape {:?} ({} elements, {} bytes){stats}, checksum fnv1a64:{:016x}",
        array.dtype(),
        array.shape(),
        array.shape().iter().product::<usize>(),
        c_bytes.len(),
        fnv1a64(&c_bytes)
    );
    if let Some(path) = out {
        let file = crate::npy::write(array.dtype(), array.shape(), &c_bytes);
        std::fs::write(path, file).with_context(|| format!("writing {}", path.display()))?;
        text.push_str(&format!("\nwrote {}", path.display()));
    }
    Ok(text)
}

/// The array's elements in C order as bytes, and a summary of its first values.
fn flatten(a: &WireArray) -> anyhow::Result<(Vec<u8>, String)> {
    fn go<T: Element + std::fmt::Debug>(a: &WireArray) -> anyhow::Result<(Vec<u8>, String)> {
        let owned = a.to_array::<T>()?.as_standard_layout().into_owned();
        let first: Vec<&T> = owned.iter().take(6).collect();
        let more = if owned.len() > 6 { ", …" } else { "" };
        let summary = format!(": [{}{more}]", first.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(", "));
        Ok((WireArray::from_array(owned).data().to_vec(), summary))
    }
    use courier::courier_core::num_complex::Complex;
    match a.dtype() {
        DType::Bool => go::<bool>(a),
        DType::I8 => go::<i8>(a),
        DType::I16 => go::<i16>(a),
        DType::I32 => go::<i32>(a),
        DType::I64 => go::<i64>(a),
        DType::U8 => go::<u8>(a),
        DType::U16 => go::<u16>(a),
        DType::U32 => go::<u32>(a),
        DType::U64 => go::<u64>(a),
        DType::F32 => go::<f32>(a),
        DType::F64 => go::<f64>(a),
        DType::C64 => go::<Complex<f32>>(a),
        DType::C128 => go::<Complex<f64>>(a),
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier::courier_core::ndarray::{Array2, ShapeBuilder};

    #[test]
    fn plain_values_print_as_json_and_arrays_as_a_summary() {
        assert_eq!(render(&Payload::new(&42i64).unwrap(), None).unwrap(), "42");
        let f = Array2::from_shape_vec((2, 3).f(), vec![1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0]).unwrap();
        let text = render(&Payload::new(&WireArray::from_array(f)).unwrap(), None).unwrap();
        assert!(
            text.starts_with("array f8 shape [2, 3] (6 elements, 48 bytes): [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]"),
            "{text}"
        );
        assert!(render(&Payload::new(&1i64).unwrap(), Some(std::path::Path::new("x.npy"))).is_err());
    }
}
