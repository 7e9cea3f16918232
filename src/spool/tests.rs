use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::mpsc;

use super::*;

type Frames = mpsc::Receiver<io::Result<Bytes>>;

/// A body fed through a channel; `sent` counts what it has handed out.
fn channel(rx: Frames) -> impl Body<Data = Bytes, Error = io::Error> + Send + Unpin + 'static {
    StreamBody::new(frames_of(rx).map(|r| r.map(Frame::data)))
}

fn frames_of(mut rx: Frames) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Unpin {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn limits(memory: u64, file: u64) -> Limits {
    Limits {
        memory_per_answer: memory,
        memory_total: memory * 4,
        file_per_answer: file,
        file_total: file * 4,
        dir: std::env::temp_dir(),
        send_timeout: Duration::from_secs(60),
    }
}

fn used(r: &ReadAhead) -> (u64, u64, u64) {
    let u = r.usage();
    (u.memory.load(Ordering::Relaxed), u.file.load(Ordering::Relaxed), u.files.load(Ordering::Relaxed))
}

#[tokio::test]
async fn a_whole_answer_is_handed_over_without_a_pump() {
    let ahead = ReadAhead::new(limits(1024, 1 << 20));
    let spooled = ahead.spool(Full::new(Bytes::from_static(b"{\"a\":1}")).map_err(|never| match never {}));
    assert!(matches!(spooled, Spooled::Whole(_)));
    assert_eq!(spooled.collect().await.unwrap().to_bytes(), "{\"a\":1}");
    assert_eq!(used(&ahead), (0, 0, 0));
}

#[tokio::test]
async fn a_streamed_answer_reaches_the_reader_frame_by_frame() {
    let ahead = ReadAhead::new(limits(1024, 1 << 20));
    let (tx, rx) = mpsc::channel(1);
    let mut spooled = ahead.spool(channel(rx));
    for i in 0..3 {
        let chunk = Bytes::from(format!("event {i}\n"));
        tx.send(Ok(chunk.clone())).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), spooled.frame()).await.expect("handed on at once");
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), chunk);
    }
    drop(tx);
    assert!(spooled.frame().await.is_none());
}

#[tokio::test]
async fn an_unread_answer_is_taken_whole_into_memory_then_a_file_and_read_back_in_order() {
    let ahead = ReadAhead::new(limits(64 * 1024, 8 << 20));
    let (tx, rx) = mpsc::channel(4);
    let spooled = ahead.spool(channel(rx));
    // 2 MiB in 16 KiB frames, each frame's bytes its index: the upstream is drained
    // although nobody reads.
    let frames = 128;
    for i in 0..frames {
        let frame = Bytes::from(vec![i as u8; 16 * 1024]);
        tokio::time::timeout(Duration::from_secs(5), tx.send(Ok(frame))).await.expect("the pump keeps taking").unwrap();
    }
    drop(tx);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (memory, file, files) = used(&ahead);
    assert!(memory <= 64 * 1024 + 16 * 1024, "memory {memory}");
    assert_eq!(memory + file, frames * 16 * 1024);
    assert_eq!(files, 1);
    let all = spooled.collect().await.unwrap().to_bytes();
    assert_eq!(all.len() as u64, frames * 16 * 1024);
    for (i, chunk) in all.chunks(16 * 1024).enumerate() {
        assert!(chunk.iter().all(|b| *b == i as u8), "frame {i} out of order");
    }
    assert_eq!(used(&ahead), (0, 0, 0), "everything given back");
}

#[tokio::test(start_paused = true)]
async fn past_the_caps_the_pump_waits_and_gives_up_after_the_send_timeout() {
    let ahead = ReadAhead::new(limits(1024, 4096));
    let (tx, rx) = mpsc::channel(1);
    let mut spooled = ahead.spool(channel(rx));
    let mut sent = 0;
    // The pump takes up to the caps (memory, then file), then stops taking.
    while tokio::time::timeout(Duration::from_secs(1), tx.send(Ok(Bytes::from(vec![7u8; 512])))).await.is_ok() {
        sent += 512;
        assert!(sent < 64 * 1024, "the pump never stopped");
    }
    assert!(sent <= 1024 + 4096 + 2 * 512, "took {sent}");
    // Nobody reads for the send timeout: the answer is given up and its space freed.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(ahead.usage().abandoned.load(Ordering::Relaxed), 1);
    assert_eq!(used(&ahead), (0, 0, 0), "freed at once, before the reader notices");
    let mut got = 0;
    let err = loop {
        match spooled.frame().await {
            Some(Ok(f)) => got += f.into_data().unwrap().len(),
            Some(Err(e)) => break e,
            None => panic!("a given-up answer must not end cleanly"),
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(super::is_given_up(&err));
    assert!(!super::is_given_up(&io::Error::new(io::ErrorKind::TimedOut, "another time-out")));
    assert!(got <= sent);
    assert!(tx.is_closed(), "the upstream body was dropped");
    drop(spooled);
    assert_eq!(used(&ahead), (0, 0, 0));
}

#[tokio::test]
async fn a_reader_that_leaves_stops_the_pump_and_frees_its_spool() {
    let ahead = ReadAhead::new(limits(1024, 1 << 20));
    let (tx, rx) = mpsc::channel(1);
    let spooled = ahead.spool(channel(rx));
    for _ in 0..8 {
        tx.send(Ok(Bytes::from(vec![1u8; 1024]))).await.unwrap();
    }
    drop(spooled);
    tokio::time::timeout(Duration::from_secs(5), tx.closed()).await.expect("the pump dropped the upstream body");
    assert_eq!(used(&ahead), (0, 0, 0));
}

#[tokio::test]
async fn an_upstream_failure_reaches_the_reader_after_what_came_before() {
    let ahead = ReadAhead::new(limits(1024, 1 << 20));
    let (tx, rx) = mpsc::channel(2);
    let mut spooled = ahead.spool(channel(rx));
    tx.send(Ok(Bytes::from_static(b"part"))).await.unwrap();
    tx.send(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut"))).await.unwrap();
    assert_eq!(spooled.frame().await.unwrap().unwrap().into_data().unwrap(), "part");
    assert_eq!(spooled.frame().await.unwrap().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_stops_after_the_upstream_is_done_loses_the_rest_after_the_send_timeout() {
    let ahead = ReadAhead::new(limits(1024, 1 << 20));
    let (tx, rx) = mpsc::channel(1);
    let mut spooled = ahead.spool(channel(rx));
    for _ in 0..16 {
        tx.send(Ok(Bytes::from(vec![3u8; 1024]))).await.unwrap();
    }
    drop(tx);
    // The reader takes one frame, then nothing.
    assert!(spooled.frame().await.unwrap().is_ok());
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_ne!(used(&ahead), (0, 0, 0), "held for the client within the send timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(used(&ahead), (0, 0, 0), "given up and freed");
    assert_eq!(ahead.usage().abandoned.load(Ordering::Relaxed), 1);
    assert_eq!(spooled.frame().await.unwrap().unwrap_err().kind(), io::ErrorKind::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_that_keeps_taking_keeps_its_answer() {
    let ahead = ReadAhead::new(limits(1024, 1 << 20));
    let (tx, rx) = mpsc::channel(1);
    let spooled = ahead.spool(channel(rx));
    for _ in 0..8 {
        tx.send(Ok(Bytes::from(vec![4u8; 1024]))).await.unwrap();
    }
    drop(tx);
    let mut spooled = spooled;
    let mut got = 0;
    while let Some(frame) = spooled.frame().await {
        got += frame.expect("never given up").into_data().unwrap().len();
        tokio::time::sleep(Duration::from_secs(50)).await;
    }
    assert_eq!(got, 8 * 1024);
    assert_eq!(ahead.usage().abandoned.load(Ordering::Relaxed), 0);
}
