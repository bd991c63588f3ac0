//! What the engine tests share: a way to run the engine's futures, and a real X-ray.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Runs a future that never waits (the CPU backend's reads are ready at once).
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the CPU backend's futures complete at once"),
    }
}

/// The bytes of a real chest X-ray (a JPEG) from the repository's test data.
pub fn xray_file() -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/xray/person1951_bacteria_4882.jpeg"),
    )
    .unwrap()
}
