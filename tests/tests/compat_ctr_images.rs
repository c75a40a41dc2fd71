//! Debian's `ctr` (1.6) image and content commands against berthd, each checked by what the user sees, as
//! measured against Debian's containerd 1.6 with the same image: `images check` (complete, unpacked, and
//! incomplete once a layer is gone), `images tag` (a second name, refused when it exists), `images rm` (of one
//! name, of an unknown name: a warning, exit 0), `run --rm IMAGE` (`hi`, exit 0; `exit 7` → 7), `content get`
//! (the blob's bytes), `content prune references` (layer references dropped and the layers collected, the
//! image still runs from its snapshot), `content fetch` (blobs and image back, not unpacked). Root only.

use berth_tests::ctr_fixture::{ok, text, CtrFixture};

/// The line of `images check` for `reference`.
#[track_caller]
fn check_line(c: &CtrFixture, reference: &str) -> String {
    let out = ok(&c.ctr(&["images", "check"]), "ctr images check");
    out.lines()
        .find(|l| l.starts_with(reference))
        .unwrap_or_else(|| panic!("{reference} not in images check: {out}"))
        .to_string()
}

/// `content ls -q`, sorted.
#[track_caller]
fn blobs(c: &CtrFixture) -> Vec<String> {
    let mut v: Vec<String> = ok(&c.ctr(&["content", "ls", "-q"]), "ctr content ls")
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn images_check_tag_rm_and_run() {
    let Some(mut c) = CtrFixture::new("cc-img") else {
        return;
    };
    let Some(image) = c.pull_busybox() else {
        return;
    };
    let layout = c.image.clone().expect("pulled");

    let line = check_line(&c, &image);
    assert!(line.contains(&layout.manifest.digest), "{line}");
    assert!(line.contains("complete (2/2)"), "{line}");
    assert!(line.trim_end().ends_with("true"), "unpacked: {line}");
    let q = ok(&c.ctr(&["images", "check", "-q"]), "ctr images check -q");
    assert_eq!(q, format!("{image}\n"));

    // run from the image: output and exit codes.
    let id = c.container("hi");
    let o = c.run(&["--rm"], &image, &id, &["echo", "hi"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n", "{}", text(&o));
    let id = c.container("seven");
    let o = c.run(&["--rm"], &image, &id, &["sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));

    // tag: a second name for the same manifest; an existing name is refused.
    let second = format!("{image}-two");
    let out = ok(
        &c.ctr(&["images", "tag", &image, &second]),
        "ctr images tag",
    );
    assert_eq!(out, format!("{second}\n"));
    let ls = ok(&c.ctr(&["images", "ls"]), "ctr images ls");
    for name in [&image, &second] {
        let l = ls
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not listed: {ls}"));
        assert!(l.contains(&layout.manifest.digest), "{l}");
    }
    let o = c.ctr(&["images", "tag", &image, &second]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{}",
        text(&o)
    );

    // rm of one name leaves the other and every blob.
    let before = blobs(&c);
    let out = ok(&c.ctr(&["images", "rm", &second]), "ctr images rm");
    assert_eq!(out, format!("{second}\n"));
    let q = ok(&c.ctr(&["images", "ls", "-q"]), "ctr images ls -q");
    assert_eq!(q, format!("{image}\n"));
    assert_eq!(blobs(&c), before, "the other name keeps the blobs");

    // rm of an unknown name: a warning, exit 0.
    let o = c.ctr(&["images", "rm", "no-such-image:latest"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no-such-image:latest: image not found"),
        "{}",
        text(&o)
    );

    // A layer removed: check says incomplete, the snapshot still says unpacked.
    ok(
        &c.ctr(&["content", "rm", &layout.layers[0].digest]),
        "ctr content rm",
    );
    let line = check_line(&c, &image);
    assert!(line.contains("incomplete (1/2)"), "{line}");
    assert!(line.trim_end().ends_with("true"), "{line}");
    let q = ok(&c.ctr(&["images", "check", "-q"]), "ctr images check -q");
    assert_eq!(q, "", "an incomplete image is not ready");

    ok(&c.ctr(&["images", "rm", "--sync", &image]), "ctr images rm");
    assert_eq!(blobs(&c), Vec::<String>::new());
    c.fx.guard.assert_clean();
}

#[test]
fn content_get_prune_references_and_fetch() {
    let Some(mut c) = CtrFixture::new("cc-content") else {
        return;
    };
    let Some(image) = c.pull_busybox() else {
        return;
    };
    let layout = c.image.clone().expect("pulled");
    let (manifest, config, layer) = (
        layout.manifest.digest.clone(),
        layout.config.digest.clone(),
        layout.layers[0].digest.clone(),
    );

    // get: the blob's exact bytes.
    let o = c.ctr(&["content", "get", &manifest]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        o.stdout,
        layout.blob(&manifest),
        "content get of the manifest"
    );
    let o = c.ctr(&["content", "get", &config]);
    assert_eq!(o.stdout, layout.blob(&config), "content get of the config");

    // prune references: the manifest no longer references its layer, which GC then removes; the image
    // keeps its snapshot and still runs.
    let o = c.ctr(&["content", "prune", "references"]);
    assert!(o.status.success(), "{}", text(&o));
    let mut want = vec![manifest.clone(), config.clone()];
    want.sort();
    assert_eq!(blobs(&c), want, "the layer is collected");
    let ls = ok(&c.ctr(&["content", "ls"]), "ctr content ls");
    let mline = ls
        .lines()
        .find(|l| l.starts_with(&manifest))
        .unwrap_or_else(|| panic!("manifest not listed: {ls}"));
    assert!(!mline.contains("gc.ref.content.l.0"), "{mline}");
    assert!(
        mline.contains(&format!("containerd.io/gc.ref.content.config={config}")),
        "{mline}"
    );
    let cline = check_line(&c, &image);
    assert!(cline.contains("incomplete (1/2)"), "{cline}");
    assert!(cline.trim_end().ends_with("true"), "{cline}");
    let id = c.container("pruned");
    let o = c.run(&["--rm"], &image, &id, &["echo", "still runs"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "still runs\n");

    // fetch: every blob back and the image record, not unpacked.
    ok(&c.ctr(&["images", "rm", "--sync", &image]), "ctr images rm");
    assert_eq!(blobs(&c), Vec::<String>::new());
    let o = c.ctr(&["content", "fetch", "--plain-http", &image]);
    assert!(o.status.success(), "{}", text(&o));
    let mut want = vec![manifest.clone(), config.clone(), layer.clone()];
    want.sort();
    assert_eq!(blobs(&c), want);
    let q = ok(&c.ctr(&["images", "ls", "-q"]), "ctr images ls -q");
    assert_eq!(q, format!("{image}\n"));
    let cline = check_line(&c, &image);
    assert!(cline.contains("complete (2/2)"), "{cline}");
    assert!(cline.trim_end().ends_with("false"), "not unpacked: {cline}");
    let snaps = ok(&c.ctr(&["snapshots", "ls"]), "ctr snapshots ls");
    assert_eq!(snaps.lines().count(), 1, "only the header: {snaps}");

    ok(&c.ctr(&["images", "rm", "--sync", &image]), "ctr images rm");
    assert_eq!(blobs(&c), Vec::<String>::new());
    c.fx.guard.assert_clean();
}
