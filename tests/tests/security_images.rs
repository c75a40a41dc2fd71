//! Hostile images against berthd's pull path (Transfer, from Debian's docker-registry on loopback):
//! decompression bombs (gzip and zstd layers expanding far past `max_unpacked_layer_size`) stop at
//! the limit with an error naming it and leave no snapshot; a manifest or config whose declared size
//! is huge, and a manifest past `max_manifest_size`, are refused before anything is fetched; device
//! nodes in a layer are unpacked (as containerd does) but useless to a default container (the
//! devices cgroup refuses them); a very deep tree unpacks and is collected again. `..`, absolute
//! and symlinked paths and hard links out of the root are in daemon_pull_hostile.rs. Root only.

use std::io::Write;
use std::process::{Command, Stdio};

use berth_tests::archive::{Entry, EntryKind, TarBuilder};
use berth_tests::cli_fixture::{text, CliFixture};
use berth_tests::oci_layout::{busybox_layer_tar, host_arch, sha256_digest, write_image};
use berth_tests::registry::{http, Registry};
use berth_tests::task_fixture::TaskFixture;
use berth_tests::transfer::{PullOptions, Transfer};
use serde_json::{json, Value};

/// The unpack limit these tests give berthd.
const LIMIT: u64 = 16 << 20;

/// `data` compressed by the host tool `tool` (`gzip` or `zstd`), reading from a pipe.
fn compress(tool: &str, data: &[u8]) -> Option<Vec<u8>> {
    let path = berth_tests::find_tool(tool)?;
    let mut child = Command::new(path)
        .args(["-c", "-3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn compressor");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("compressor");
    writer.join().expect("writer").expect("write to compressor");
    assert!(out.status.success(), "{tool} failed");
    Some(out.stdout)
}

/// Push an image made of `layers` (media type, blob, uncompressed tar) to `name:latest`; returns
/// the manifest's JSON (to be tampered with by the caller if it wants).
fn push_image(registry: &Registry, name: &str, layers: &[(&str, Vec<u8>, Vec<u8>)]) -> Value {
    let config = json!({
        "architecture": host_arch(), "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256_digest(&l.2)).collect::<Vec<_>>()},
    });
    let config = serde_json::to_vec(&config).expect("json");
    registry.push_blob(name, &config);
    let mut descs = Vec::new();
    for (media, blob, _) in layers {
        registry.push_blob(name, blob);
        descs.push(json!({"mediaType": media, "digest": sha256_digest(blob), "size": blob.len()}));
    }
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_digest(&config), "size": config.len()},
        "layers": descs,
    })
}

/// PUT a manifest or index document as `name:tag`; returns its digest and size, or the
/// registry's refusal.
fn put_manifest(
    registry: &Registry,
    name: &str,
    tag: &str,
    doc: &Value,
) -> Result<(String, usize), String> {
    let bytes = serde_json::to_vec(doc).expect("json");
    let media = doc["mediaType"].as_str().unwrap_or_default();
    let path = format!("/v2/{name}/manifests/{tag}");
    let r = http(
        &registry.addr,
        "PUT",
        &path,
        &[("Content-Type", media)],
        &bytes,
    )
    .map_err(|e| e.to_string())?;
    if r.status != 201 {
        return Err(format!(
            "{}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    Ok((sha256_digest(&bytes), bytes.len()))
}

/// A berthd whose unpack limit is [`LIMIT`].
fn limited_fixture(name: &str) -> TaskFixture {
    let mut fx = TaskFixture::new(name, "");
    let mut cfg = std::fs::read_to_string(&fx.config_path).expect("config");
    cfg.push_str(&format!("max_unpacked_layer_size = {LIMIT}\n"));
    std::fs::write(&fx.config_path, cfg).expect("config");
    fx.daemon.restart();
    fx
}

/// Snapshot dirs under berthd's overlayfs snapshotter.
fn snapshot_dirs(fx: &TaskFixture) -> Vec<String> {
    std::fs::read_dir(fx.daemon.root().join("snapshots/overlayfs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_stop_at_the_unpack_limit() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = limited_fixture("sec-bomb");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let t = Transfer::new(fx.channel().await, &fx.ns);
    // 64 MiB of zeros in one file: four times the limit, a few KiB compressed.
    let bomb = TarBuilder::new()
        .file("bomb", 0o644, &vec![0u8; 64 << 20])
        .finish();
    let fits = TarBuilder::new()
        .file("fits", 0o644, &vec![0u8; 8 << 20])
        .finish();
    for (tool, media) in [
        ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
    ] {
        let Some(blob) = compress(tool, &bomb) else {
            berth_tests::skip(&format!("no {tool} tool"));
            continue;
        };
        assert!(blob.len() < 1 << 20, "{tool}: {} bytes", blob.len());
        let name = format!("bomb-{tool}");
        let before = snapshot_dirs(&fx);
        let manifest = push_image(&registry, &name, &[(media, blob, bomb.clone())]);
        put_manifest(&registry, &name, "latest", &manifest).expect("push bomb");
        let err = t
            .pull(
                &registry.reference(&format!("{name}:latest")),
                &PullOptions::default(),
            )
            .await
            .expect_err("a bomb must not unpack");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{tool}: {err:?}");
        assert!(
            err.message().contains("max_unpacked_layer_size")
                && err.message().contains(&LIMIT.to_string()),
            "{tool}: names the limit: {}",
            err.message()
        );
        eprintln!("{tool}: {}", err.message());
        assert_eq!(
            snapshot_dirs(&fx),
            before,
            "{tool}: a half-unpacked snapshot was left"
        );
        // The client-side path (Debian's ctr 1.6 fetches, berthd's Diff.Apply unpacks) stops too.
        if tool == "gzip" && berth_tests::find_tool("ctr").is_some() {
            let before = snapshot_dirs(&fx);
            let reference = registry.reference(&format!("{name}:latest"));
            let out = fx.ctr(&["images", "pull", "--plain-http", &reference]);
            let err = text(&out.stderr);
            assert!(!out.status.success(), "ctr unpacked a bomb");
            assert!(err.contains("max_unpacked_layer_size"), "ctr: {err}");
            assert_eq!(snapshot_dirs(&fx), before, "ctr: a snapshot was left");
        }
        // Under the limit, the same compressor's layer unpacks.
        let blob = compress(tool, &fits).expect("compress");
        let name = format!("fits-{tool}");
        let manifest = push_image(&registry, &name, &[(media, blob, fits.clone())]);
        put_manifest(&registry, &name, "latest", &manifest).expect("push");
        t.pull(
            &registry.reference(&format!("{name}:latest")),
            &PullOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{tool}: a layer under the limit: {e:?}"));
    }
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_sizes_are_refused_before_fetching() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("sec-sizes", "");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let t = Transfer::new(fx.channel().await, &fx.ns);
    let layer = busybox_layer_tar();
    let gz = berth_tests::archive::gzip(&layer);
    let media = "application/vnd.oci.image.layer.v1.tar+gzip";
    let manifest = push_image(&registry, "sizes", &[(media, gz, layer)]);
    let (digest, _) = put_manifest(&registry, "sizes", "good", &manifest).expect("push");

    // An index claiming its (real) manifest is 1 TiB.
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": digest, "size": 1u64 << 40,
                       "platform": {"architecture": host_arch(), "os": "linux"}}],
    });
    put_manifest(&registry, "sizes", "huge-manifest", &index).expect("push index");
    // A manifest claiming its config is 1 TiB.
    let mut m = manifest.clone();
    m["config"]["size"] = json!(1u64 << 40);
    put_manifest(&registry, "sizes", "huge-config", &m).expect("push manifest");
    for (tag, names) in [
        ("huge-manifest", "max_manifest_size"),
        ("huge-config", "limit for configs"),
    ] {
        let err = t
            .pull(
                &registry.reference(&format!("sizes:{tag}")),
                &PullOptions::default(),
            )
            .await
            .expect_err("a huge declared size must be refused");
        eprintln!("{tag}: {}", err.message());
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{tag}: {err:?}");
        assert!(
            err.message().contains(names) && err.message().contains("1099511627776"),
            "{tag}: names the size and the limit: {}",
            err.message()
        );
    }
    // A real 5 MiB manifest (padded with an annotation), past containerd's 4 MiB.
    let mut big = manifest.clone();
    big["annotations"] = json!({"pad": "x".repeat(5 << 20)});
    match put_manifest(&registry, "sizes", "big", &big) {
        Ok(_) => {
            let err = t
                .pull(&registry.reference("sizes:big"), &PullOptions::default())
                .await
                .expect_err("a 5 MiB manifest must be refused");
            eprintln!("big: {}", err.message());
            assert!(err.message().contains("limit"), "{}", err.message());
        }
        Err(e) => eprintln!("the registry itself refused a 5 MiB manifest: {e}"),
    }
    assert!(snapshot_dirs(&fx).is_empty(), "{:?}", snapshot_dirs(&fx));
    // The honest tag still pulls.
    t.pull(&registry.reference("sizes:good"), &PullOptions::default())
        .await
        .expect("the good image");
    fx.guard.assert_clean();
}

#[test]
fn device_nodes_in_an_image_are_useless_to_a_default_container() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("sec-dev");
    let mut mem = Entry::new(EntryKind::Char, "hostmem", 0o666);
    mem.dev = (1, 1); // /dev/mem
    let mut disk = Entry::new(EntryKind::Block, "hostdisk", 0o666);
    disk.dev = (254, 0); // this VM's /dev/vda
    let devices = TarBuilder::new().append(mem).append(disk).finish();
    let layout = write_image(
        &f.fx.dir.join("dev-layout"),
        &[busybox_layer_tar(), devices],
        json!({}),
        "latest",
    );
    let image = "docker.io/library/devices:latest";
    f.seed(&layout, image);
    let out = f.run(&[
        "run", "--rm", "--net", "none", image, "dev", "sh", "-c",
        "ls -l /hostmem /hostdisk; head -c 1 /hostmem; echo mem=$?; head -c 1 /hostdisk; echo disk=$?",
    ]);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(
        so.contains("mem=1") && so.contains("disk=1"),
        "stdout {so} stderr {se}"
    );
    assert!(se.contains("Operation not permitted"), "{se}");
    f.fx.guard.assert_clean();
}

#[test]
fn a_very_deep_tree_unpacks_and_is_collected() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("sec-deep");
    // 2,000 nested dirs (a 4,000-byte path, past what a single path syscall takes), a file at
    // the bottom.
    let depth = 2000;
    let mut tar = TarBuilder::new();
    let mut path = String::new();
    for _ in 0..depth {
        path.push_str("d/");
        tar.dir(path.trim_end_matches('/'), 0o755);
    }
    tar.file(&format!("{path}bottom"), 0o644, b"deep\n");
    let layout = write_image(
        &f.fx.dir.join("deep-layout"),
        &[busybox_layer_tar(), tar.finish()],
        json!({}),
        "latest",
    );
    let image = "docker.io/library/deep:latest";
    f.seed(&layout, image);
    let out = f.run(&[
        "run",
        "--rm",
        "--net",
        "none",
        image,
        "deep",
        "sh",
        "-c",
        "cd d; n=1; while cd d 2>/dev/null; do n=$((n+1)); done; echo depth=$n; cat bottom",
    ]);
    assert_eq!(
        text(&out.stdout),
        format!("depth={depth}\ndeep\n"),
        "{}",
        text(&out.stderr)
    );
    // Removing the image collects its snapshots: nothing of the tree is left.
    f.ok(&["images", "rm", "--sync", image]);
    let left = std::fs::read_dir(f.fx.daemon.root().join("snapshots/overlayfs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "snapshot dirs left after the image went");
    f.fx.guard.assert_clean();
}
