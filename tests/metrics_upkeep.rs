//! Histogram samples do not pile up between scrapes: the Prometheus exporter keeps every
//! recorded sample until it is folded into the buckets, which only a scrape or an upkeep does.
//! Alone in its file (its own process): it measures the process's heap in use.

/// Bytes the allocator has handed out and not been given back (glibc's count).
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

#[test]
fn histogram_samples_are_folded_into_buckets_without_a_scrape() {
    assert!(switchyard::metrics::install().is_some());
    let h = switchyard::metrics::handshake_histogram("upkeep");
    const SAMPLES: usize = 400_000;
    let before = heap_in_use();
    for _ in 0..SAMPLES {
        h.record(0.002);
    }
    let piled = heap_in_use().saturating_sub(before);
    // 8 bytes a sample at the least: the growth a balancer nobody scrapes had per handshake
    assert!(piled >= SAMPLES * 8, "{piled} bytes for {SAMPLES} samples");

    // an upkeep folds them; the freed blocks go back once the epoch moves on (any later use)
    switchyard::metrics::upkeep();
    for _ in 0..1000 {
        h.record(0.002);
        switchyard::metrics::upkeep();
    }
    let left = heap_in_use().saturating_sub(before);
    assert!(left < piled / 8, "{left} bytes still held after the upkeep ({piled} before it)");
    // and the samples were counted, not dropped
    let text = switchyard::metrics::render();
    let count = text
        .lines()
        .find(|l| l.starts_with("switchyard_handshake_duration_seconds_count{pool=\"upkeep\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<usize>().ok());
    assert_eq!(count, Some(SAMPLES + 1000));
}
