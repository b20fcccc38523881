//! Criterion bench: matching topic names against a subscription trie of
//! 10^5 filters, a mix of exact filters (70 %) and filters with `+` and
//! `#` at various levels, as a large deployment's subscription table
//! would look. Each iteration matches one topic from a fixed rotation of
//! 1024 (most match several filters, some match none).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tributary_core::trie::Trie;

const FILTERS: usize = 100_000;
const SITES: usize = 200;

/// Filter number `i`: site `i % SITES`, device `i / SITES`.
fn filter(i: usize) -> String {
    let (site, device) = (i % SITES, i / SITES);
    match i % 10 {
        0..=6 => format!("site/{site}/dev/{device}/temp"),
        7 => format!("site/{site}/dev/{device}/+"),
        8 => format!("site/{site}/+/{device}/#"),
        _ => format!("+/{site}/dev/{device}/temp"),
    }
}

fn build() -> Trie<u32> {
    let mut trie = Trie::new();
    // Broad filters first: one `#` per site.
    for site in 0..SITES {
        trie.insert(&format!("site/{site}/#"), site as u32);
    }
    for i in 0..FILTERS - SITES {
        trie.insert(&filter(i), i as u32);
    }
    assert_eq!(trie.len(), FILTERS);
    trie
}

/// A deterministic rotation of topics: devices that exist, devices that do
/// not, other metrics, and topics outside the tree.
fn topics() -> Vec<String> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64: deterministic, no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..1024)
        .map(|n| {
            let site = next() as usize % SITES;
            let device = next() as usize % (FILTERS / SITES + 50);
            match n % 8 {
                0..=4 => format!("site/{site}/dev/{device}/temp"),
                5 => format!("site/{site}/dev/{device}/humidity"),
                6 => format!("site/{site}/gw/{device}/status/online"),
                _ => format!("other/{site}/dev/{device}/temp"),
            }
        })
        .collect()
}

fn bench_match(c: &mut Criterion) {
    let trie = build();
    let topics = topics();
    let mut group = c.benchmark_group("trie_match_100k_filters");
    group.throughput(Throughput::Elements(1));
    let mut n = 0usize;
    group.bench_function("for_each_filter_matching", |b| {
        b.iter(|| {
            let topic = &topics[n % topics.len()];
            n = n.wrapping_add(1);
            let mut matched = 0u32;
            trie.for_each_filter_matching(black_box(topic), &mut |v: &u32| {
                matched = matched.wrapping_add(*v | 1)
            });
            black_box(matched)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_match);
criterion_main!(benches);
