//! Overload: while more jobs wait than `VIPAVATAR_MAX_QUEUED`, upload and generate answer 429
//! `overloaded` with `Retry-After` and store nothing; answers that queue nothing (a joined
//! upload) are still served.

use crate::helpers::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after_and_stores_nothing() {
    let Some(data) = testdata() else { return };
    // No worker: every job stays waiting.
    let app = spawn_app_with(0, |c| c.jobs.max_queued = 1).await;
    let images = ["happy.png", "sad.png", "people_0.png"].map(|n| read(data.join("images").join(n)));
    let (s, first) = app.upload(images[0].clone(), None).await;
    assert_eq!(s, 202, "{first}");
    let (s, second) = app.upload(images[1].clone(), None).await;
    assert_eq!(s, 202, "one waiting job is not more than the limit: {second}");
    // Two waiting now: more than 1.
    let form = reqwest::multipart::Form::new().part("image_file", png_part(images[2].clone()));
    let resp = app.client.post(app.url("/api/avatar/upload")).multipart(form).send().await.unwrap();
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    assert_error(&json(resp).await, 429, "overloaded");
    // (generate runs the same check after its engine check; without a live worker this app
    // answers that one first, `no_worker`, so it is not exercised here.)
    // Nothing of the refused requests was stored; a repeat upload still joins its avatar.
    let stored = std::fs::read_dir(app.config.data_dir.join("images")).unwrap().count();
    assert_eq!(stored, 2, "only the accepted originals");
    assert_eq!(std::fs::read_dir(app.config.data_dir.join("audio")).unwrap().count(), 0);
    let (s, again) = app.upload(images[0].clone(), None).await;
    assert_eq!((s.as_u16(), again["status"].as_str()), (202, Some("processing")), "{again}");
    let (_, stats) = app.get_json("/api/cache/stats").await;
    assert_eq!(stats["queue_status"]["standard"], 2, "{stats}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
