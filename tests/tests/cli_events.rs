//! `berth events` shows what a run produced: create, start, exit and delete of the task, one
//! line each with time, namespace, topic and the decoded event; `--from SEQ` replays berthd's
//! journal; `--format json` gives one object per line; filters narrow the stream. Root only.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_tests::cli_fixture::{CliFixture, BUSYBOX};

/// A running `berth events ...` whose stdout lines arrive on a channel.
struct Events {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Events {
    fn start(f: &CliFixture, args: &[&str]) -> Events {
        let mut child = f
            .berth()
            .arg("events")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn berth events");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Events { child, lines: rx }
    }

    /// Lines until one contains `needle` (all of them, that one last).
    fn until(&self, needle: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    seen.push(l);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!("no event line with {needle:?} within {limit:?}; saw {seen:#?}"),
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The topics of `lines` that mention container `id`, in order.
fn topics_of(lines: &[String], id: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains(&format!("\"{id}\"")))
        .filter_map(|l| l.split_whitespace().nth(2).map(String::from))
        .collect()
}

#[test]
fn events_show_a_run_and_the_journal_replays_it() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-events");
    f.seed_busybox();
    let live = Events::start(&f, &[]);
    // Only task events of this namespace.
    let tasks_only = Events::start(
        &f,
        &[&format!("topic~=\"/tasks/.*\",namespace=={}", f.ns())],
    );
    // The subscriptions are up once a namespace event made by us shows in both.
    let marker = berth_tests::unique_id("mark");
    let mut ns = f.berth();
    ns.args(["namespaces", "label", f.ns(), &format!("mark={marker}")]);
    // The namespace exists once something was written in it (the seeded image).
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let out = berth_tests::run_timeout(&mut ns, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Ok(l) = live.lines.recv_timeout(Duration::from_millis(300)) {
            break l;
        }
        assert!(Instant::now() < deadline, "berth events shows nothing");
    };
    assert!(first.contains("/namespaces/update"), "{first}");

    let out = f.run(&[
        "run", "--rm", "--net", "none", BUSYBOX, "ev1", "sh", "-c", "exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4));
    let lines = live.until("/containers/delete", Duration::from_secs(30));
    let topics = topics_of(&lines, "ev1");
    let order = [
        "/containers/create",
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|t| {
            topics
                .iter()
                .position(|x| x == t)
                .unwrap_or_else(|| panic!("no {t} in {topics:?}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "order {topics:?}"
    );
    let exit = lines
        .iter()
        .find(|l| l.contains("/tasks/exit"))
        .expect("exit line");
    // `<RFC 3339 time> <namespace> <topic> <json>`
    let fields: Vec<&str> = exit.splitn(4, ' ').collect();
    assert!(
        fields[0].ends_with('Z') && fields[0].contains('T'),
        "{exit}"
    );
    assert_eq!(fields[1], f.ns());
    let ev: serde_json::Value = serde_json::from_str(fields[3]).expect("json event");
    assert_eq!(ev["container_id"], "ev1");
    assert_eq!(ev["exit_status"], 4);

    let filtered = tasks_only.until("/tasks/delete", Duration::from_secs(30));
    assert!(
        filtered.iter().all(|l| l.contains(" /tasks/")),
        "{filtered:#?}"
    );

    // Replay from the journal's start, as JSON, with sequence numbers.
    let replay = Events::start(&f, &["--from", "1", "--format", "json"]);
    let lines = replay.until("\"/containers/delete\"", Duration::from_secs(30));
    let docs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let seqs: Vec<u64> = docs
        .iter()
        .map(|d| d["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let exit = docs
        .iter()
        .find(|d| d["topic"] == "/tasks/exit")
        .expect("exit replayed");
    assert_eq!(exit["event"]["exit_status"], 4);
    assert_eq!(exit["namespace"], f.ns());
    f.fx.guard.assert_clean();
}
