//! The ingest's compiled hot path. Kafka's keyed partitioner (murmur2), and the event
//! ids one events partition remembers for deduplication (`PartitionCore.admit` in `streams/ingest/conversations.py` asks, and
//! reads a record back from the store when a match needs confirming).
//!
//! Every event's id is looked up once and, when admitted, remembered; at the end of a
//! batch its ids become changelog records (`[["<id>",<ts>],...]`, cut as
//! `streams.store.records.chunks` cuts them). In Python that was about 2 µs an event,
//! a quarter of the ingest's CPU (dict, tuples, spilling to fingerprints, the
//! records' JSON); here it is a fraction of that, with the same answers.
//!
//! What is kept per id is a 32-bit fingerprint in a table (the number of its latest
//! acceptance) and, by batch, its fingerprint and ts (about 30 bytes an id in all); the
//! ids themselves are in the changelog records, which the
//! partition's store keeps. A fingerprint that matches is confirmed against the id
//! (in the batch still open, here; in a record, by the caller reading the store), so
//! the answer is exact whatever collides. Ids whose fingerprint collides with another
//! live id are kept by their string, beside the fingerprints.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// The fingerprints are already random: the table keyed by them hashes nothing again.
#[derive(Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Fingerprint -> the acceptance number (low 32 bits) of its id's latest acceptance;
/// that acceptance's ts is in its record (or the open batch).
type ByFingerprint = HashMap<u32, u32, BuildHasherDefault<Passthrough>>;

/// An id kept by its string (its fingerprint collided with another live id's): the ts
/// of its latest acceptance.
#[derive(Clone, Copy)]
struct Entry {
    ts: f64,
}

/// A changelog record of a batch's ids: acceptances `first_seq..` up to the next
/// record's. `key` is None when it was not written (all its ids already past the
/// horizon).
struct Record {
    first_seq: u64,
    key: Option<Vec<u8>>,
    newest: f64,
    fingerprints: Vec<u32>,
    ts: Vec<f64>,
}

/// One accepted id of the open batch: its bytes are `batch_text[start..start + len]`.
struct Accepted {
    start: usize,
    len: usize,
    ts: f64,
    fingerprint: u32,
}

/// A keyed 64-bit hash of the id (folded multiplications, as foldhash and wyhash do;
/// its low 32 bits are the fingerprint: a match is confirmed, so width only sets how
/// often, about once per 14,000 new ids with 300,000 remembered):
/// a few nanoseconds where SipHash took tens, and keyed per process like it.
fn fingerprint(bytes: &[u8], seeds: [u64; 2]) -> u64 {
    const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;
    let fold = |a: u64, b: u64| {
        let product = u128::from(a) * u128::from(b);
        (product as u64) ^ ((product >> 64) as u64)
    };
    let mut hash = seeds[0] ^ (bytes.len() as u64).wrapping_mul(MULTIPLIER);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        hash = fold(hash ^ word, seeds[1] ^ MULTIPLIER);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        hash = fold(hash ^ u64::from_le_bytes(last), seeds[1] ^ MULTIPLIER);
    }
    fold(hash, seeds[0] | 1)
}

/// Random keys from the standard library's per-process random state.
fn random_seeds() -> [u64; 2] {
    let state = std::collections::hash_map::RandomState::new();
    let mut first = state.build_hasher();
    first.write_u64(1);
    let mut second = state.build_hasher();
    second.write_u64(2);
    [first.finish(), second.finish()]
}

/// `admit`'s verdicts.
const NEW: u8 = 0;
const DUPLICATE: u8 = 1;
const CONFIRM: u8 = 2; // a record may hold it: read it and ask `ids_record_holds`

#[pyclass(module = "messaging_native")]
pub struct EventIds {
    horizon: f64,
    seeds: [u64; 2], // the fingerprints' keys, random per process: never stored
    mask: u32,       // all 32 bits, but for tests that make fingerprints collide
    by_fingerprint: ByFingerprint,
    collided: HashMap<String, Entry>,
    batch: Vec<Accepted>,      // the open batch's ids, in acceptance order
    batch_text: Vec<u8>,       // and their bytes, one after the other
    batch_seq: u64,            // the acceptance number of batch[0]
    records: VecDeque<Record>, // oldest first
    next_seq: u64,
}

impl EventIds {
    fn fingerprint(&self, event_id: &str) -> u32 {
        (fingerprint(event_id.as_bytes(), self.seeds) as u32) & self.mask
    }

    /// The acceptance number whose low 32 bits are `low`: every live one is within
    /// 2^32 of the oldest live record's first.
    fn full_seq(&self, low: u32) -> u64 {
        let base = self.records.front().map_or(self.batch_seq, |r| r.first_seq);
        base + u64::from(low.wrapping_sub(base as u32))
    }

    /// The ts of acceptance `seq` (live: in a record or the open batch).
    fn ts_of(&self, seq: u64) -> f64 {
        if seq >= self.batch_seq {
            self.batch[(seq - self.batch_seq) as usize].ts
        } else {
            let record = self.record_of(seq).expect("a live acceptance's record");
            record.ts[(seq - record.first_seq) as usize]
        }
    }

    fn batch_id(&self, accepted: &Accepted) -> &str {
        let bytes = &self.batch_text[accepted.start..accepted.start + accepted.len];
        std::str::from_utf8(bytes).expect("stored from a str")
    }

    fn push_batch(&mut self, event_id: &str, ts: f64, fingerprint: u32) {
        let start = self.batch_text.len();
        self.batch_text.extend_from_slice(event_id.as_bytes());
        self.batch.push(Accepted {
            start,
            len: event_id.len(),
            ts,
            fingerprint,
        });
    }

    fn record_of(&self, seq: u64) -> Option<&Record> {
        let after = self.records.partition_point(|r| r.first_seq <= seq);
        if after == 0 {
            None
        } else {
            self.records.get(after - 1)
        }
    }

    /// Remember an acceptance: by fingerprint, unless a live entry of another id holds
    /// it (`same_id`: whether that entry is this id, when the caller can tell).
    ///
    /// What decides a duplicate is an id's newest ts among its acceptances, which is the
    /// ts of its latest one: an id is accepted again only once every earlier copy is
    /// past the horizon. A restore reads records by their newest ts, not in the order
    /// they were written, so there an older copy may come after a newer one: it keeps
    /// the newer.
    fn remember(
        &mut self,
        event_id: &str,
        fingerprint: u32,
        ts: f64,
        oldest: f64,
        same_id: bool,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if !self.collided.is_empty() {
            if let Some(known) = self.collided.get_mut(event_id) {
                known.ts = known.ts.max(ts); // a restore may read an older copy after it
                return seq;
            }
        }
        let live = match self.by_fingerprint.get(&fingerprint) {
            Some(&low) => self.ts_of(self.full_seq(low)) >= oldest,
            None => false,
        };
        if live && !same_id {
            self.collided.insert(event_id.to_owned(), Entry { ts });
        } else {
            self.by_fingerprint.insert(fingerprint, seq as u32);
        }
        seq
    }

    fn verdict(&self, event_id: &str, fingerprint: u32, oldest: f64) -> u8 {
        if !self.collided.is_empty() {
            if let Some(known) = self.collided.get(event_id) {
                return if known.ts >= oldest { DUPLICATE } else { NEW };
            }
        }
        let seq = match self.by_fingerprint.get(&fingerprint) {
            Some(&low) => self.full_seq(low),
            None => return NEW,
        };
        if self.ts_of(seq) < oldest {
            return NEW;
        }
        if seq >= self.batch_seq {
            let accepted = &self.batch[(seq - self.batch_seq) as usize];
            if self.batch_id(accepted) == event_id {
                DUPLICATE
            } else {
                NEW
            }
        } else if self.record_of(seq).map_or(false, |r| r.key.is_some()) {
            CONFIRM
        } else {
            NEW
        }
    }
}

/// The id as orjson writes a JSON string (`ids_record_holds` searches for these bytes).
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for &byte in text.as_bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x00..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(byte >> 4) as usize]);
                out.push(HEX[(byte & 15) as usize]);
            }
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

/// `streams.store.records.chunks`: runs of at most `limit` by size, halved until each fits.
fn chunks(sizes: &[usize], start: usize, end: usize, limit: usize, out: &mut Vec<(usize, usize)>) {
    if end - start == 1 || sizes[start..end].iter().sum::<usize>() <= limit {
        out.push((start, end));
        return;
    }
    let half = start + (end - start) / 2;
    chunks(sizes, start, half, limit, out);
    chunks(sizes, half, end, limit, out);
}

#[pymethods]
impl EventIds {
    /// `fingerprint_bits` below 32 only for tests: fingerprints that collide often.
    #[new]
    #[pyo3(signature = (horizon, fingerprint_bits = 32))]
    fn new(horizon: f64, fingerprint_bits: u32) -> Self {
        EventIds {
            horizon,
            seeds: random_seeds(),
            mask: if fingerprint_bits >= 32 {
                u32::MAX
            } else {
                (1u32 << fingerprint_bits) - 1
            },
            by_fingerprint: ByFingerprint::default(),
            collided: HashMap::new(),
            batch: Vec::new(),
            batch_text: Vec::new(),
            batch_seq: 0,
            records: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// Whether an earlier copy of `event_id` was accepted with ts `oldest` or later: 0
    /// (no: this one is accepted and remembered with `ts`), 1 (yes), or 2 (perhaps:
    /// :meth:`record_of` names the record to confirm it in; then :meth:`accept` if not).
    fn admit(&mut self, event_id: &str, ts: f64, oldest: f64) -> u8 {
        let fingerprint = self.fingerprint(event_id);
        let verdict = self.verdict(event_id, fingerprint, oldest);
        if verdict == NEW {
            self.remember(event_id, fingerprint, ts, oldest, false);
            self.push_batch(event_id, ts, fingerprint);
        }
        verdict
    }

    /// Remember an accepted id (after :meth:`admit` said 2 and the record did not hold it).
    fn accept(&mut self, event_id: &str, ts: f64, oldest: f64) {
        let fingerprint = self.fingerprint(event_id);
        self.remember(event_id, fingerprint, ts, oldest, false);
        self.push_batch(event_id, ts, fingerprint);
    }

    /// The key of the record that may hold `event_id` (after :meth:`admit` said 2).
    fn record_of_id<'py>(&self, py: Python<'py>, event_id: &str) -> Option<Bound<'py, PyBytes>> {
        let low = *self.by_fingerprint.get(&self.fingerprint(event_id))?;
        let key = self.record_of(self.full_seq(low))?.key.as_ref()?;
        Some(PyBytes::new(py, key))
    }

    /// Close the batch: its ids as changelog records ``(key, value, newest)``, keyed
    /// ``prefix + b"<last_offset>:<n>"``, each at most `record_bytes` by the ids' sizes
    /// (``len(id) + 32``); none all of whose ids are past the horizon at `now`.
    fn finish_batch<'py>(
        &mut self,
        py: Python<'py>,
        prefix: &[u8],
        last_offset: i64,
        now: f64,
        record_bytes: usize,
    ) -> Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, f64)> {
        let mut written = Vec::new();
        if self.batch.is_empty() {
            return written;
        }
        let sizes: Vec<usize> = self
            .batch
            .iter()
            .map(|accepted| {
                let id = self.batch_id(accepted);
                (if id.is_ascii() {
                    id.len()
                } else {
                    id.chars().count()
                }) + 32
            })
            .collect();
        let mut cuts = Vec::new();
        chunks(&sizes, 0, sizes.len(), record_bytes, &mut cuts);
        for (n, (start, end)) in cuts.into_iter().enumerate() {
            let ids = &self.batch[start..end];
            let newest = ids.iter().map(|a| a.ts).fold(f64::NEG_INFINITY, f64::max);
            let mut key = None;
            if newest + self.horizon >= now {
                let mut value = Vec::with_capacity(sizes[start..end].iter().sum());
                value.push(b'[');
                let mut floats = ryu::Buffer::new();
                for (i, accepted) in ids.iter().enumerate() {
                    if i > 0 {
                        value.push(b',');
                    }
                    value.push(b'[');
                    push_json_string(&mut value, self.batch_id(accepted));
                    value.push(b',');
                    value.extend_from_slice(floats.format_finite(accepted.ts).as_bytes());
                    value.push(b']');
                }
                value.push(b']');
                let mut name = prefix.to_vec();
                name.extend_from_slice(format!("{}:{}", last_offset, n).as_bytes());
                written.push((PyBytes::new(py, &name), PyBytes::new(py, &value), newest));
                key = Some(name);
            }
            self.records.push_back(Record {
                first_seq: self.batch_seq + start as u64,
                key,
                newest,
                fingerprints: ids.iter().map(|a| a.fingerprint).collect(),
                ts: ids.iter().map(|a| a.ts).collect(),
            });
        }
        self.batch.clear();
        self.batch_text.clear();
        self.batch_seq = self.next_seq;
        written
    }

    /// Forget the records all of whose ids are older than `oldest`, and their ids.
    fn expire(&mut self, oldest: f64) {
        while self.records.front().map_or(false, |r| r.newest < oldest) {
            let record = self.records.pop_front().expect("front");
            let end = self.records.front().map_or(self.batch_seq, |r| r.first_seq);
            let base = record.first_seq; // the oldest live acceptance until now
            for fingerprint in record.fingerprints {
                if let Some(&low) = self.by_fingerprint.get(&fingerprint) {
                    if base + u64::from(low.wrapping_sub(base as u32)) < end {
                        self.by_fingerprint.remove(&fingerprint);
                    }
                }
            }
        }
        if !self.collided.is_empty() {
            self.collided.retain(|_, entry| entry.ts >= oldest);
        }
    }

    /// After a restore: the store's records of ids ``(key, value)``, in any order;
    /// `oldest` is the restored clock's horizon.
    fn restore(&mut self, records: Vec<(Vec<u8>, Vec<u8>)>, oldest: f64) -> PyResult<()> {
        if !self.batch.is_empty() || !self.records.is_empty() {
            return Err(PyValueError::new_err(
                "restore into ids that hold some already",
            ));
        }
        let mut parsed = Vec::with_capacity(records.len());
        for (key, value) in records {
            let ids = std::str::from_utf8(&value)
                .ok()
                .and_then(parse_ids)
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "not a record of event ids: {}",
                        String::from_utf8_lossy(&value[..value.len().min(80)])
                    ))
                })?;
            if ids.is_empty() {
                continue;
            }
            let newest = ids
                .iter()
                .map(|(_, ts)| *ts)
                .fold(f64::NEG_INFINITY, f64::max);
            parsed.push((newest, key, ids));
        }
        parsed.sort_by(|a, b| a.0.total_cmp(&b.0)); // stable: ties keep the store's order
                                                    // which id each fingerprint's entry is, while the strings are at hand
        let mut whose: HashMap<u32, (usize, usize), BuildHasherDefault<Passthrough>> =
            HashMap::default();
        for (r, (newest, key, ids)) in parsed.iter().enumerate() {
            let first_seq = self.next_seq;
            let fingerprints: Vec<u32> = ids.iter().map(|(id, _)| self.fingerprint(id)).collect();
            self.records.push_back(Record {
                first_seq,
                key: Some(key.clone()),
                newest: *newest,
                fingerprints: fingerprints.clone(),
                ts: ids.iter().map(|(_, ts)| *ts).collect(),
            });
            self.batch_seq = first_seq + ids.len() as u64; // its ts are read from the record
            for (i, ((id, ts), fingerprint)) in ids.iter().zip(fingerprints).enumerate() {
                let same = whose
                    .get(&fingerprint)
                    .map_or(false, |&(pr, pi)| parsed[pr].2[pi].0 == *id);
                if same && self.ts_of(self.full_seq(self.by_fingerprint[&fingerprint])) >= *ts {
                    self.next_seq += 1; // an older copy, read after a newer one: not its latest
                    continue;
                }
                let seq = self.remember(id, fingerprint, *ts, oldest, same);
                if self.by_fingerprint.get(&fingerprint) == Some(&(seq as u32)) {
                    whose.insert(fingerprint, (r, i));
                }
            }
        }
        self.batch_seq = self.next_seq;
        Ok(())
    }

    /// How many ids are remembered (those of the open batch included).
    fn __len__(&self) -> usize {
        self.by_fingerprint.len() + self.collided.len()
    }

    /// About how many bytes the remembered ids take.
    fn memory_bytes(&self) -> usize {
        let table = self.by_fingerprint.capacity() * (4 + 4 + 1);
        let records: usize = self
            .records
            .iter()
            .map(|r| r.fingerprints.capacity() * 4 + r.ts.capacity() * 8 + 96)
            .sum();
        let batch =
            self.batch.capacity() * std::mem::size_of::<Accepted>() + self.batch_text.capacity();
        let collided: usize = self.collided.keys().map(|id| id.capacity() + 64).sum();
        table + records + batch + collided
    }
}

/// `[["<id>",<ts>],...]` as `finish_batch` (and orjson) writes it.
fn parse_ids(text: &str) -> Option<Vec<(String, f64)>> {
    let bytes = text.as_bytes();
    let mut at = 0;
    let skip_ws = |at: &mut usize| {
        while *at < bytes.len() && (bytes[*at] as char).is_ascii_whitespace() {
            *at += 1;
        }
    };
    let expect = |at: &mut usize, byte: u8| -> Option<()> {
        skip_ws(at);
        if *at < bytes.len() && bytes[*at] == byte {
            *at += 1;
            Some(())
        } else {
            None
        }
    };
    let mut out = Vec::new();
    expect(&mut at, b'[')?;
    skip_ws(&mut at);
    if at < bytes.len() && bytes[at] == b']' {
        return Some(out);
    }
    loop {
        expect(&mut at, b'[')?;
        skip_ws(&mut at);
        let id = parse_string(bytes, &mut at)?;
        expect(&mut at, b',')?;
        skip_ws(&mut at);
        let start = at;
        while at < bytes.len()
            && matches!(bytes[at], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        {
            at += 1;
        }
        let ts: f64 = text[start..at].parse().ok()?;
        expect(&mut at, b']')?;
        out.push((id, ts));
        skip_ws(&mut at);
        match bytes.get(at)? {
            b',' => at += 1,
            b']' => {
                at += 1;
                skip_ws(&mut at);
                return if at == bytes.len() { Some(out) } else { None };
            }
            _ => return None,
        }
    }
}

fn parse_string(bytes: &[u8], at: &mut usize) -> Option<String> {
    if bytes.get(*at)? != &b'"' {
        return None;
    }
    *at += 1;
    let mut out: Vec<u8> = Vec::new();
    loop {
        let byte = *bytes.get(*at)?;
        *at += 1;
        match byte {
            b'"' => return String::from_utf8(out).ok(),
            b'\\' => {
                let escaped = *bytes.get(*at)?;
                *at += 1;
                match escaped {
                    b'"' => out.push(b'"'),
                    b'\\' => out.push(b'\\'),
                    b'/' => out.push(b'/'),
                    b'b' => out.push(0x08),
                    b'f' => out.push(0x0c),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'u' => {
                        let mut unit = hex4(bytes, at)?;
                        if (0xd800..0xdc00).contains(&unit) {
                            // a surrogate pair: \uD83D\uDE00
                            if bytes.get(*at)? != &b'\\' || bytes.get(*at + 1)? != &b'u' {
                                return None;
                            }
                            *at += 2;
                            let low = hex4(bytes, at)?;
                            if !(0xdc00..0xe000).contains(&low) {
                                return None;
                            }
                            unit = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                        }
                        let ch = char::from_u32(unit)?;
                        let mut buffer = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buffer).as_bytes());
                    }
                    _ => return None,
                }
            }
            _ => out.push(byte),
        }
    }
}

fn hex4(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let digits = std::str::from_utf8(bytes.get(*at..*at + 4)?).ok()?;
    *at += 4;
    u32::from_str_radix(digits, 16).ok()
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`): the default
/// partitioner's hash of a key's bytes, as the Java client and aiokafka compute it.
#[pyfunction]
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes(word.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = words.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h = (h ^ u32::from(tail[0])).wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The default keyed partitioner of the Java client and aiokafka: the partition of
/// `key` (bytes, or text: its UTF-8 bytes, not encoded in Python) among `partitions`.
#[pyfunction]
fn partition_for(key: &Bound<'_, PyAny>, partitions: u32) -> PyResult<u32> {
    if partitions == 0 {
        return Err(PyValueError::new_err("no partitions to choose from"));
    }
    let hash = if let Ok(bytes) = key.downcast::<PyBytes>() {
        murmur2(bytes.as_bytes())
    } else if let Ok(text) = key.downcast::<PyString>() {
        murmur2(text.to_str()?.as_bytes())
    } else {
        return Err(PyTypeError::new_err("a key is bytes or str"));
    };
    Ok((hash & 0x7fff_ffff) % partitions)
}

#[pymodule]
fn messaging_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<EventIds>()?;
    module.add_function(wrap_pyfunction!(murmur2, module)?)?;
    module.add_function(wrap_pyfunction!(partition_for, module)?)?;
    module.add("NEW", NEW)?;
    module.add("DUPLICATE", DUPLICATE)?;
    module.add("CONFIRM", CONFIRM)?;
    Ok(())
}
