//! docs/PROTOCOL.md §7 is a public contract: these tests fail when its message tables or its
//! example bytes disagree with the code.

use std::collections::BTreeMap;

use courier_core::{Payload, to_message};
use courier_runtime::protocol::*;
use rmpv::Value;

fn section7() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md")).unwrap();
    let start = doc.find("## 7. Runtime messages").expect("section 7");
    let end = doc[start..].find("\n## 8.").map_or(doc.len(), |e| start + e);
    doc[start..end].to_owned()
}

/// Each documented type: its variants (or, for a struct, its own name) and their field names.
fn documented() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut types = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in section7().lines() {
        if let Some(name) = line.strip_prefix("#### `").and_then(|l| l.strip_suffix('`')) {
            current = Some(name.to_owned());
            continue;
        }
        if let Some(name) = line.strip_prefix('`').and_then(|l| l.strip_suffix("` is a map:")) {
            current = Some(name.to_owned());
            continue;
        }
        let Some(ty) = &current else { continue };
        let cells: Vec<&str> = line.split(" | ").collect();
        let Some(variant) = cells.first().and_then(|c| c.strip_prefix("| `")).and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        let fields = match cells.get(1).map(|c| c.trim()) {
            Some("—") | Some("Payload") | Some("Key") | None => Vec::new(),
            Some(f) => {
                f.split(", `").map(|p| p.trim_start_matches('`').split('`').next().unwrap().to_owned()).collect()
            }
        };
        types.entry(ty.clone()).or_insert_with(BTreeMap::new).insert(variant.to_owned(), fields);
    }
    types
}

/// The variant (or struct) name and field names of one serialized value, as MessagePack shows them.
fn shape(name: &str, value: &impl serde::Serialize) -> (String, Vec<String>) {
    let header = to_message(&[value]).unwrap().header;
    let v = rmpv::decode::read_value(&mut &header[..]).unwrap();
    let Value::Array(mut items) = v else { panic!("a batch is an array: {v:?}") };
    let item = items.pop().unwrap();
    let keys = |m: &Vec<(Value, Value)>| m.iter().map(|(k, _)| k.as_str().unwrap().to_owned()).collect::<Vec<_>>();
    match item {
        Value::String(s) => (s.into_str().unwrap(), Vec::new()),
        Value::Map(m) if m.len() == 1 && m[0].0.as_str().is_some_and(|k| k.starts_with(char::is_uppercase)) => {
            let variant = m[0].0.as_str().unwrap().to_owned();
            match &m[0].1 {
                Value::Map(fields) if !fields.iter().any(|(k, _)| k.as_str() == Some("h")) => (variant, keys(fields)),
                _ => (variant, Vec::new()),
            }
        }
        Value::Map(m) => (name.to_owned(), keys(&m)),
        other => panic!("unexpected {other:?}"),
    }
}

fn payload() -> Payload {
    Payload::new(&1i64).unwrap()
}

fn contact() -> LocalContact {
    LocalContact { address: "shm://@w".into(), host: "h".into() }
}

fn spec() -> TaskSpec {
    TaskSpec { key: "k".into(), func: "f".into(), args: vec![ArgSpec::Key("d".into())], retries: 0, wanted: true }
}

/// One value of every variant of every message type. The exhaustive matches make a new
/// variant a compile error here until it is sampled (and then documented).
fn samples() -> Vec<(&'static str, (String, Vec<String>))> {
    let mut out = Vec::new();
    let hello = [
        Hello::Client { name: "c".into() },
        Hello::Worker { name: "w".into(), address: "tcp://h:1".into(), nthreads: 1, local: Some(contact()) },
    ];
    for h in &hello {
        match h {
            Hello::Client { .. } | Hello::Worker { .. } => out.push(("Hello", shape("Hello", h))),
        }
    }
    let c2s = [
        ClientToScheduler::Submit { tasks: vec![spec()] },
        ClientToScheduler::Release { keys: vec![] },
        ClientToScheduler::Cancel { keys: vec![] },
        ClientToScheduler::Scatter { id: 1, keys: vec![("k".into(), 8)] },
        ClientToScheduler::WhoHas { id: 1, keys: vec![] },
        ClientToScheduler::Retire { id: 1, workers: vec![] },
        ClientToScheduler::AdaptiveTarget { id: 1 },
        ClientToScheduler::WorkerInfo { id: 1 },
    ];
    for m in &c2s {
        match m {
            ClientToScheduler::Submit { .. }
            | ClientToScheduler::Release { .. }
            | ClientToScheduler::Cancel { .. }
            | ClientToScheduler::Scatter { .. }
            | ClientToScheduler::WhoHas { .. }
            | ClientToScheduler::Retire { .. }
            | ClientToScheduler::AdaptiveTarget { .. }
            | ClientToScheduler::WorkerInfo { .. } => out.push(("ClientToScheduler", shape("", m))),
        }
    }
    let s2c = [
        SchedulerToClient::Workers { added: vec![], removed: vec![], local: vec![] },
        SchedulerToClient::Done { key: "k".into(), holders: [].into() },
        SchedulerToClient::Erred { key: "k".into(), failure: Failure::Cancelled },
        SchedulerToClient::Lost { key: "k".into() },
        SchedulerToClient::ScatterTargets { id: 1, result: Err(ScatterError::NoWorkers) },
        SchedulerToClient::WhoHasReply { id: 1, holders: vec![] },
        SchedulerToClient::Retired { id: 1, result: Ok(()) },
        SchedulerToClient::Target { id: 1, workers: 1, idle: vec![] },
        SchedulerToClient::WorkerInfo { id: 1, workers: vec![] },
    ];
    for m in &s2c {
        match m {
            SchedulerToClient::Workers { .. }
            | SchedulerToClient::Done { .. }
            | SchedulerToClient::Erred { .. }
            | SchedulerToClient::Lost { .. }
            | SchedulerToClient::ScatterTargets { .. }
            | SchedulerToClient::WhoHasReply { .. }
            | SchedulerToClient::Retired { .. }
            | SchedulerToClient::Target { .. }
            | SchedulerToClient::WorkerInfo { .. } => out.push(("SchedulerToClient", shape("", m))),
        }
    }
    let w2s = [
        WorkerToScheduler::Finished { key: "k".into(), run: 1, nbytes: 1, seconds: 0.5 },
        WorkerToScheduler::Erred { key: "k".into(), run: 1, message: "m".into() },
        WorkerToScheduler::MissingData { key: "k".into(), run: 1, dep: "d".into(), tried: vec![] },
        WorkerToScheduler::StealReply { key: "k".into(), run: 1, stolen: true },
        WorkerToScheduler::Replicated { key: "k".into(), ok: true },
        WorkerToScheduler::ScatterReady { id: 1 },
        WorkerToScheduler::Stored { key: "k".into(), nbytes: 1 },
        WorkerToScheduler::Heartbeat,
        WorkerToScheduler::Memory(WorkerMemory::default()),
        WorkerToScheduler::Transfers(WorkerTransfers::default()),
        WorkerToScheduler::DataLost { key: "k".into(), reason: "r".into() },
    ];
    for m in &w2s {
        match m {
            WorkerToScheduler::Finished { .. }
            | WorkerToScheduler::Erred { .. }
            | WorkerToScheduler::MissingData { .. }
            | WorkerToScheduler::StealReply { .. }
            | WorkerToScheduler::Replicated { .. }
            | WorkerToScheduler::ScatterReady { .. }
            | WorkerToScheduler::Stored { .. }
            | WorkerToScheduler::Heartbeat
            | WorkerToScheduler::Memory(_)
            | WorkerToScheduler::Transfers(_)
            | WorkerToScheduler::DataLost { .. } => out.push(("WorkerToScheduler", shape("", m))),
        }
    }
    let s2w = [
        SchedulerToWorker::Compute {
            key: "k".into(),
            run: 1,
            func: "f".into(),
            args: Vec::new().into(),
            who_has: vec![],
        },
        SchedulerToWorker::Release { keys: vec![] },
        SchedulerToWorker::Steal { key: "k".into(), run: 1 },
        SchedulerToWorker::Replicate { key: "k".into(), from: vec![] },
        SchedulerToWorker::ExpectScatter { id: 1, keys: vec![] },
        SchedulerToWorker::PeerGone { address: "a".into() },
        SchedulerToWorker::LocalPeers { peers: vec![] },
        SchedulerToWorker::Shutdown,
    ];
    for m in &s2w {
        match m {
            SchedulerToWorker::Compute { .. }
            | SchedulerToWorker::Release { .. }
            | SchedulerToWorker::Steal { .. }
            | SchedulerToWorker::Replicate { .. }
            | SchedulerToWorker::ExpectScatter { .. }
            | SchedulerToWorker::PeerGone { .. }
            | SchedulerToWorker::LocalPeers { .. }
            | SchedulerToWorker::Shutdown => out.push(("SchedulerToWorker", shape("", m))),
        }
    }
    let reqs = [
        DataRequest::Get { id: 1, keys: vec![] },
        DataRequest::Store { id: 1, key: "k".into(), ticket: 2, value: payload() },
        DataRequest::Stats { id: 1 },
    ];
    for m in &reqs {
        match m {
            DataRequest::Get { .. } | DataRequest::Store { .. } | DataRequest::Stats { .. } => {
                out.push(("DataRequest", shape("", m)))
            }
        }
    }
    let replies = [
        DataReply::Data { id: 1, values: vec![] },
        DataReply::Stored { id: 1 },
        DataReply::Refused { id: 1, reason: "r".into() },
        DataReply::Stats { id: 1, fetched: vec![] },
    ];
    for m in &replies {
        match m {
            DataReply::Data { .. } | DataReply::Stored { .. } | DataReply::Refused { .. } | DataReply::Stats { .. } => {
                out.push(("DataReply", shape("", m)))
            }
        }
    }
    out.push(("TaskSpec", shape("TaskSpec", &spec())));
    out.push(("LocalContact", shape("LocalContact", &contact())));
    out.push(("TransferCount", shape("TransferCount", &TransferCount::default())));
    out.push(("WorkerMemory", shape("WorkerMemory", &WorkerMemory::default())));
    out.push(("IoCount", shape("IoCount", &IoCount::default())));
    out.push(("WorkerTransfers", shape("WorkerTransfers", &WorkerTransfers::default())));
    let summary = WorkerSummary {
        name: "w".into(),
        address: "a".into(),
        nthreads: 1,
        processing: 0,
        held: 0,
        ran: 0,
        retiring: false,
        memory: WorkerMemory::default(),
    };
    out.push(("WorkerSummary", shape("WorkerSummary", &summary)));
    for a in [ArgSpec::Value(payload()), ArgSpec::Key("k".into())] {
        match a {
            ArgSpec::Value(_) | ArgSpec::Key(_) => out.push(("ArgSpec", shape("", &a))),
        }
    }
    let failures = [
        Failure::Error { message: "m".into() },
        Failure::Cancelled,
        Failure::KilledWorker { workers: vec![] },
        Failure::DataLost { reason: "r".into() },
        Failure::Rejected { reason: "r".into() },
        Failure::Dependency { root: "k".into(), cause: Box::new(Failure::Cancelled) },
    ];
    for f in &failures {
        match f {
            Failure::Error { .. }
            | Failure::Cancelled
            | Failure::KilledWorker { .. }
            | Failure::DataLost { .. }
            | Failure::Rejected { .. }
            | Failure::Dependency { .. } => out.push(("Failure", shape("", f))),
        }
    }
    out.push((
        "ScatterTarget",
        shape("ScatterTarget", &ScatterTarget { key: "k".into(), worker: "w".into(), ticket: 1 }),
    ));
    let scatter_errors = [
        ScatterError::NoWorkers,
        ScatterError::InvalidKey { key: "k".into(), reason: "r".into() },
        ScatterError::WorkerLeft { worker: "w".into() },
    ];
    for e in &scatter_errors {
        match e {
            ScatterError::NoWorkers | ScatterError::InvalidKey { .. } | ScatterError::WorkerLeft { .. } => {
                out.push(("ScatterError", shape("", e)))
            }
        }
    }
    let retire_errors = [
        RetireError::UnknownWorker { address: "a".into() },
        RetireError::Refused { workers: vec![], reason: "r".into() },
        RetireError::Died { workers: vec![] },
        RetireError::CopyFailed { key: "k".into() },
    ];
    for e in &retire_errors {
        match e {
            RetireError::UnknownWorker { .. }
            | RetireError::Refused { .. }
            | RetireError::Died { .. }
            | RetireError::CopyFailed { .. } => out.push(("RetireError", shape("", e))),
        }
    }
    out
}

#[test]
fn the_message_tables_match_the_code() {
    let doc = documented();
    let mut code: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (ty, (variant, fields)) in samples() {
        code.entry(ty.to_owned()).or_default().insert(variant, fields);
    }
    for (ty, variants) in &code {
        let documented = doc.get(ty).unwrap_or_else(|| panic!("PROTOCOL.md §7 does not document {ty}"));
        assert_eq!(documented, variants, "PROTOCOL.md §7 `{ty}`: documented vs code");
    }
    assert_eq!(doc.keys().collect::<Vec<_>>(), code.keys().collect::<Vec<_>>(), "documented types vs code");
}

fn hex_blocks() -> Vec<Vec<u8>> {
    let s = section7();
    let example = s.split("### 7.4 Example").nth(1).expect("§7.4");
    example
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|block| block.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("hex byte")).collect())
        .collect()
}

#[test]
fn the_documented_example_bytes_are_what_the_code_sends() {
    let blocks = hex_blocks();
    assert_eq!(blocks.len(), 2);
    assert_eq!(to_message(&[Hello::Client { name: "c".into() }]).unwrap().header.as_ref(), &blocks[0][..]);
    let release = [ClientToScheduler::Release { keys: vec!["k1".into()] }];
    assert_eq!(to_message(&release).unwrap().header.as_ref(), &blocks[1][..]);
}

#[test]
fn the_documented_bounds_are_the_codes() {
    use courier_runtime::protocol::bounds::*;
    let s = section7();
    for (text, value) in [
        (format!("keys ≤ {MAX_KEY_LEN} bytes"), true),
        (format!("function\nnames ≤ {MAX_FUNC_LEN}"), true),
        (format!("`nthreads` in 1..={MAX_NTHREADS}"), true),
        (format!("≤ {} tasks per `Submit`", group(MAX_TASKS_PER_SUBMIT)), true),
    ] {
        assert_eq!(
            s.replace('\n', " ").contains(&text.replace('\n', " ")),
            value,
            "PROTOCOL.md §7 should say {text:?}"
        );
    }
}

/// 65536 → "65,536".
fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// §7.5: the built-ins `courier worker` offers are the ones documented, and the worked
/// example's argument and result bytes are what a Payload of 41 and of 42 hold.
#[test]
fn the_documented_functions_and_their_example_are_the_codes() {
    let s = section7();
    let functions = s.split("### 7.5 Functions").nth(1).expect("§7.5");
    let mut documented: Vec<&str> =
        functions.split('`').collect::<Vec<_>>().windows(2).filter(|w| w[1].starts_with('(')).map(|w| w[0]).collect();
    documented.sort_unstable();
    documented.dedup();
    let builtins = courier_runtime::Functions::with_builtins();
    assert_eq!(documented, builtins.names(), "PROTOCOL.md §7.5 built-ins vs code");

    assert_eq!(Payload::new(&41i64).unwrap().header.as_ref(), [0x29]);
    assert_eq!(Payload::new(&42i64).unwrap().header.as_ref(), [0x2a]);
    for text in ["\"h\": <bin 29>", "{\"h\": <bin 2a>, \"f\": []}"] {
        assert!(functions.replace('\n', " ").contains(text), "PROTOCOL.md §7.5 should say {text:?}");
    }
}
