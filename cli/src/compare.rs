//! `courier compare`: the transports side by side with a raw socket, in one run.

use std::time::Duration;

use anyhow::{Context, bail};
use courier::{Comm, Registry};
use courier_bench::{
    RawPair, Summary, TRANSPORTS, echo_client, echo_server, format_bytes, payload_message, raw_echo_client,
    raw_echo_server, raw_stream_receiver, raw_stream_sender, stream_receiver, stream_sender,
};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Payload sizes for the stream pattern, in bytes with an optional KiB/MiB/GiB suffix.
    #[arg(long, value_delimiter = ',', default_value = "1MiB,8MiB,64MiB")]
    payloads: Vec<String>,
    /// Bytes streamed per measurement (at least 4 messages are sent).
    #[arg(long, default_value = "512MiB")]
    volume: String,
    /// Repetitions per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Round trips of a 100-byte message per transport.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
}

/// Parses `64MiB`, `8 MiB`, `100`, `1GiB`.
pub(crate) fn parse_size(s: &str) -> anyhow::Result<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().with_context(|| format!("{s:?} is not a size"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => bail!("unknown size unit {other:?} in {s:?} (use B, KiB, MiB or GiB)"),
    };
    n.checked_mul(mult).with_context(|| format!("{s:?} is too large"))
}

async fn pair(registry: &Registry, url: &str) -> anyhow::Result<(Comm, Comm)> {
    let mut l = registry.listen(url).await?;
    let contact = l.contact_address().to_string();
    let (c, s) = tokio::join!(registry.connect(&contact), l.accept());
    Ok((c?, s?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Stream throughput per payload, every transport beside the raw socket.
pub(crate) async fn streams(args: &Args) -> anyhow::Result<()> {
    let registry = courier_bench::registry();
    let volume = parse_size(&args.volume)?;
    let repeat = args.repeat.max(1);
    println!("Courier transport comparison on loopback (one run; median of {repeat})");
    println!();
    println!("stream: the sender pipelines N messages of one frame each; one ack at the end");
    println!("{:<10} {:<8} {:>10} {:>14} {:>12}", "payload", "transport", "messages", "throughput", "ratio to raw");
    for p in &args.payloads {
        let len = parse_size(p)?;
        let count = (volume / len.max(1)).max(4);
        let msg = payload_message(len);
        let mut raw_rates = Vec::new();
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); TRANSPORTS.len()];
        let RawPair { client: mut raw_client, server: raw_server } = RawPair::connect().await?;
        let mut raw_server = Some(raw_server);
        let mut pairs = Vec::new();
        for (_, url) in TRANSPORTS {
            let (client, server) = pair(&registry, url).await?;
            pairs.push((client, Some(server)));
        }
        // Interleave the contenders so that drift on a shared machine hits all alike. The
        // receiver runs in its own task (another core), for raw and Courier alike.
        for _ in 0..repeat {
            let mut server = raw_server.take().context("raw server")?;
            let rx = tokio::spawn(async move {
                let mut buf = Vec::new();
                raw_stream_receiver(&mut server, count, &mut buf).await.map(|()| server)
            });
            let took = raw_stream_sender(&mut raw_client, &msg.frames[0], count).await?;
            raw_server = Some(rx.await??);
            raw_rates.push((len * count) as f64 / took.as_secs_f64());
            for (i, (client, server)) in pairs.iter_mut().enumerate() {
                let mut s = server.take().context("server comm")?;
                let expect = msg.byte_len();
                let rx = tokio::spawn(async move { stream_receiver(&mut s, count, expect).await.map(|()| s) });
                let took = stream_sender(client, &msg, count).await?;
                *server = Some(rx.await??);
                rates[i].push((len * count) as f64 / took.as_secs_f64());
            }
        }
        let raw_rate = median(raw_rates);
        println!(
            "{:<10} {:<8} {:>10} {:>12}/s {:>12}",
            format_bytes(len as u64),
            "raw",
            count,
            format_bytes(raw_rate as u64),
            "1.00"
        );
        for (i, (name, _)) in TRANSPORTS.iter().enumerate() {
            let rate = median(rates[i].clone());
            println!(
                "{:<10} {:<8} {:>10} {:>12}/s {:>12.2}",
                format_bytes(len as u64),
                name,
                count,
                format_bytes(rate as u64),
                rate / raw_rate
            );
        }
    }

    Ok(())
}

/// Small-message round trips on the current runtime, labelled `flavor`.
pub(crate) async fn echoes(args: &Args, flavor: &str) -> anyhow::Result<()> {
    let registry = courier_bench::registry();
    println!();
    println!("echo: {} round trips of a 100-byte message, {flavor} runtime", args.round_trips);
    println!("{:<8} {:>12} {:>10} {:>10} {:>12}", "transport", "round trips/s", "p50", "p99", "ratio to raw");
    let small = payload_message(100);
    let RawPair { mut client, mut server } = RawPair::connect().await?;
    let srv = tokio::spawn(async move { raw_echo_server(&mut server).await });
    let mut times = raw_echo_client(&mut client, &small.frames[0], args.round_trips).await?;
    drop(client);
    srv.await??;
    let raw = Summary::of(&mut times).context("no round trips")?;
    let raw_rps = 1.0 / raw.mean.as_secs_f64();
    print_echo("raw", &raw, raw_rps, 1.0);
    for (name, url) in TRANSPORTS {
        let (mut client, mut server) = pair(&registry, url).await?;
        let srv = tokio::spawn(async move { echo_server(&mut server).await });
        let mut times = echo_client(&mut client, &small, args.round_trips).await?;
        client.close().await?;
        srv.await??;
        let s = Summary::of(&mut times).context("no round trips")?;
        let rps = 1.0 / s.mean.as_secs_f64();
        print_echo(name, &s, rps, rps / raw_rps);
    }
    Ok(())
}

fn print_echo(name: &str, s: &Summary, rps: f64, ratio: f64) {
    println!("{:<8} {:>12.0} {:>10} {:>10} {:>12.2}", name, rps, fmt_dur(s.p50), fmt_dur(s.p99), ratio);
}

fn fmt_dur(d: Duration) -> String {
    format!("{:.1}µs", d.as_secs_f64() * 1e6)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
