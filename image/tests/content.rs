//! Content store: ingest, resume, commit checks, locks, statuses, and crash safety under SIGKILL.

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use berth_image::{ContentStore, Digest, Error};
use berth_tests::{Guard, TestDir};

#[test]
fn write_resume_commit_and_read_back() {
    let dir = TestDir::new("image-content");
    let cs = ContentStore::open(dir.path()).expect("open");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let want = Digest::of(&data);
    let mut w = cs
        .writer("layer-1", Some(data.len() as u64), Some(want.clone()))
        .expect("writer");
    w.write(&data[..100_000]).expect("write");
    assert_eq!(w.offset(), 100_000);
    // Locked while open.
    assert!(matches!(cs.writer("layer-1", None, None), Err(Error::Locked(r)) if r == "layer-1"));
    drop(w);
    // Resumed: offset and running digest rebuilt from disk.
    let st = cs.status("layer-1").expect("status");
    assert_eq!(
        (st.offset, st.total, st.expected.as_ref()),
        (100_000, Some(300_000), Some(&want))
    );
    let mut w = cs.writer("layer-1", None, None).expect("resume");
    assert_eq!(w.offset(), 100_000);
    assert_eq!(w.digest(), Digest::of(&data[..100_000]));
    let e = w.write_at(5, b"x").expect_err("out of range");
    assert!(
        matches!(
            e,
            Error::OutOfRange {
                offset: 5,
                current: 100_000,
                ..
            }
        ),
        "{e}"
    );
    w.write_at(100_000, &data[100_000..]).expect("write_at");
    let statuses = cs.list_statuses().expect("statuses");
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].reference, "layer-1");
    let d = w.commit(Some(data.len() as u64), None).expect("commit");
    assert_eq!(d, want);
    assert!(
        cs.list_statuses().expect("statuses").is_empty(),
        "ingest removed"
    );
    let info = cs.info(&d).expect("info");
    assert_eq!(info.size, data.len() as u64);
    let mode = std::fs::metadata(cs.blob_path(&d)).expect("blob");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o444
    );
    assert_eq!(
        cs.read_at(&d, 299_990, 100).expect("read_at"),
        &data[299_990..]
    );
    let mut back = Vec::new();
    cs.open_blob(&d)
        .expect("open")
        .read_to_end(&mut back)
        .expect("read");
    assert_eq!(back, data);
    assert_eq!(cs.list().expect("list").len(), 1);
    // AlreadyExists for a writer expecting a stored digest.
    assert!(
        matches!(cs.writer("again", None, Some(d.clone())), Err(Error::AlreadyExists(x)) if x == d)
    );
    cs.delete(&d).expect("delete");
    assert!(cs.info(&d).expect_err("gone").is_not_found());
}

#[test]
fn mismatches_discard_the_ingest() {
    let dir = TestDir::new("image-content-bad");
    let cs = ContentStore::open(dir.path()).expect("open");
    let mut w = cs.writer("bad-digest", None, None).expect("writer");
    w.write(b"hello").expect("write");
    let wrong = Digest::of(b"other");
    let e = w
        .commit(Some(5), Some(wrong.clone()))
        .expect_err("mismatch")
        .to_string();
    assert!(
        e.contains(wrong.as_str()) && e.contains(Digest::of(b"hello").as_str()),
        "{e}"
    );
    assert!(cs.status("bad-digest").is_err(), "discarded");
    assert!(cs.list().expect("list").is_empty());

    let mut w = cs.writer("bad-size", Some(10), None).expect("writer");
    w.write(b"hello").expect("write");
    let e = w.commit(None, None).expect_err("size").to_string();
    assert!(e.contains("expected 10 bytes, got 5"), "{e}");
    assert!(cs.status("bad-size").is_err());

    // Restart at offset 0 truncates.
    let mut w = cs.writer("restart", None, None).expect("writer");
    w.write(b"garbage").expect("write");
    w.write_at(0, b"good").expect("restart");
    assert_eq!(
        w.commit(Some(4), Some(Digest::of(b"good")))
            .expect("commit"),
        Digest::of(b"good")
    );

    // Abort and stale removal.
    let mut w = cs.writer("aborted", None, None).expect("writer");
    w.write(b"x").expect("write");
    assert!(matches!(cs.abort("aborted"), Err(Error::Locked(_))));
    drop(w);
    cs.abort("aborted").expect("abort");
    assert!(cs.status("aborted").is_err());
    let mut w = cs.writer("stale", None, None).expect("writer");
    w.write(b"x").expect("write");
    assert_eq!(
        cs.remove_stale_ingests(Duration::ZERO).expect("gc"),
        0,
        "open ingest kept"
    );
    drop(w);
    assert_eq!(
        cs.remove_stale_ingests(Duration::from_secs(3600))
            .expect("gc"),
        0
    );
    assert_eq!(cs.remove_stale_ingests(Duration::ZERO).expect("gc"), 1);
}

#[test]
fn two_refs_with_the_same_digest_both_finish() {
    let dir = TestDir::new("image-content-race");
    let cs = ContentStore::open(dir.path()).expect("open");
    let data = vec![3u8; 1 << 20];
    let d = Digest::of(&data);
    let mut a = cs.writer("a", None, Some(d.clone())).expect("a");
    let mut b = cs.writer("b", None, Some(d.clone())).expect("b");
    a.write(&data).expect("a");
    b.write(&data).expect("b");
    assert_eq!(a.commit(None, None).expect("a commits"), d);
    assert!(matches!(b.commit(None, None), Err(Error::AlreadyExists(x)) if x == d));
    assert!(cs.list_statuses().expect("statuses").is_empty());
    assert_eq!(cs.info(&d).expect("info").size, 1 << 20);
}

/// The child side of the crash test: writes and commits blobs forever.
#[test]
fn crash_child_writer() {
    let Ok(root) = std::env::var("BERTH_IMAGE_CRASH_ROOT") else {
        return;
    };
    let cs = ContentStore::open(&root).expect("open");
    for i in 0u64.. {
        let data: Vec<u8> = (0..4 << 20)
            .map(|k: u64| (k.wrapping_mul(i + 7) >> 3) as u8)
            .collect();
        // A killed round may have left this ref's ingest part written: resume it, as a real client does.
        let mut w = cs.writer(&format!("blob-{i}"), None, None).expect("writer");
        let done = w.offset() as usize;
        for c in data[done..].chunks(64 * 1024) {
            w.write(c).expect("write");
        }
        w.commit(None, None).expect("commit");
    }
}

#[test]
fn sigkill_during_writes_never_leaves_a_partial_blob() {
    let dir = TestDir::new("image-content-crash");
    let guard = Guard::new();
    for round in 0..6u64 {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BERTH_IMAGE_CRASH_ROOT", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        guard.pid(child.id() as i32);
        std::thread::sleep(Duration::from_millis(150 + round * 170));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        child.wait().expect("wait");
    }
    let cs = ContentStore::open(dir.path()).expect("open");
    let blobs = cs.list().expect("list");
    assert!(
        !blobs.is_empty(),
        "the child committed nothing: the test proves nothing"
    );
    for b in &blobs {
        let data = std::fs::read(cs.blob_path(&b.digest)).expect("read blob");
        assert_eq!(Digest::of(&data), b.digest, "partial or corrupt blob");
        assert_eq!(data.len(), 4 << 20);
    }
    // Interrupted ingests can be resumed.
    for s in cs.list_statuses().expect("statuses") {
        let w = cs.writer(&s.reference, None, None).expect("resume");
        assert_eq!(w.offset(), s.offset);
    }
    guard.assert_clean();
}
