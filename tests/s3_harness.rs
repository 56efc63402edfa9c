//! The Garage harness of the S3 tests (tests/common/garage.rs) works: a
//! server starts with its bucket, takes a PUT, is stopped (the bucket is
//! unreachable) and restarted on the same port with its data.
mod common;

use std::time::Instant;

use common::garage::Garage;

#[test]
fn garage_starts_and_takes_a_put() {
    let t = Instant::now();
    let mut g = Garage::start();
    eprintln!("garage started in {:?}", t.elapsed());
    // A space, an é and a '+': percent-encoded in the path (encode_key).
    let key = "P1/releases/x/a dir/é+b.txt";
    g.put(key, b"hello");
    assert_eq!(g.get(key).as_deref(), Some(&b"hello"[..]));
    assert_eq!(g.get("P1/absent"), None);
    assert_eq!(g.keys("P1/"), [key]);

    g.stop();
    let o = g.curl(&["-o", "/dev/null", &g.url(key)]);
    assert_eq!(o.status.code(), Some(7), "curl to a stopped garage: not 'connection refused'");

    let t = Instant::now();
    g.restart();
    eprintln!("garage restarted in {:?}", t.elapsed());
    assert_eq!(g.get(key).as_deref(), Some(&b"hello"[..]));
    let o = g.garage_cmd(&["bucket", "list"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains(&g.bucket), "{o:?}");
}
