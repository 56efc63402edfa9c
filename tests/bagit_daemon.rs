//! A producer whose profile is bagit, through the daemon: a bag dropped
//! into new/ is queued, checked and published as it is; a damaged bag ends
//! FAILURE BAG_INVALID in Redis with nothing published.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

mod common;

use std::fs;

use common::*;
use support::*;

/// `zip -r bag.zip mybag/` of a bag with MD5 manifests (what md5sum makes),
/// whose manifest was made when data/obs.csv held `listed`.
fn bag(obs: &[u8], listed: &[u8]) -> Vec<u8> {
    let files: [(&str, &[u8]); 2] = [("data/obs.csv", obs), ("data/README", b"Observations.\n")];
    let sums: [(&str, &[u8]); 2] = [("data/obs.csv", listed), files[1]];
    let manifest: String = sums.iter().map(|(p, d)| format!("{}  {p}\n", md5hex(d))).collect();
    let octets: usize = files.iter().map(|(_, d)| d.len()).sum();
    let bagit = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n";
    let info = format!("Payload-Oxum: {octets}.2\n");
    let mut z = RawZip::new().dir("mybag/").file("mybag/bagit.txt", bagit).file("mybag/bag-info.txt", info);
    z = z.file("mybag/manifest-md5.txt", manifest).dir("mybag/data/");
    for (p, d) in files {
        z = z.file(format!("mybag/{p}"), d.to_vec());
    }
    z.build()
}

#[test]
fn a_bag_dropped_into_new_is_published_as_it_is() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[producers.LOCB]\nprofile = \"bagit\"\n");
    let daemon = site.start();
    site.drop_rsync("LOCB", "bag.zip", &bag(b"t,v\n1,2.5\n", b"t,v\n1,2.5\n"));
    wait_for(&site, "the bag ended", 60, || redis.deposits().iter().any(terminal));
    let d = redis.deposits().pop().unwrap();
    assert_eq!(d["state"], "SUCCESS", "{d:?}\n{}", site.log());
    let release = site.root().join("publish/LOCB/current");
    assert_eq!(fs::read(release.join("data/obs.csv")).unwrap(), b"t,v\n1,2.5\n");
    for f in ["bagit.txt", "bag-info.txt", "manifest-md5.txt", "data/README", "manifest.json"] {
        assert!(release.join(f).is_file(), "{f}");
    }
    assert!(!release.join("mybag").exists(), "the bag's folder is the release root");
    // MD5 alone is a warning, said to the operator.
    assert!(site.log().contains("accepted with a warning"), "{}", site.log());

    // A damaged bag: FAILURE BAG_INVALID, the release unchanged.
    let before = fs::read_link(&release).unwrap();
    site.drop_rsync("LOCB", "bag2.zip", &bag(b"t,v\n1,9.9\n", b"t,v\n1,2.5\n"));
    wait_for(&site, "the damaged bag ended", 60, || redis.deposits().iter().filter(|d| terminal(d)).count() == 2);
    let bad = redis.deposits().into_iter().find(|d| d["file"] == "bag2.zip").unwrap();
    assert_eq!(bad["state"], "FAILURE", "{bad:?}");
    assert_eq!(bad["error_code"], "BAG_INVALID", "{bad:?}");
    assert!(bad["error"].contains("data/obs.csv"), "{bad:?}");
    assert_eq!(fs::read_link(&release).unwrap(), before);
    assert_eq!(fs::read(release.join("data/obs.csv")).unwrap(), b"t,v\n1,2.5\n");
    assert_eq!(stop(daemon), Some(0));
}
