//! The cohort hash. It must put every user in the same cohort as the company's
//! TypeScript (`parseInt(md5(id).hex[0..8], 16) % 100`), so it is byte-exact with
//! Node's `crypto`; the vectors in `tests/data/percentile-vectors.tsv` pin it.

use md5::{Digest, Md5};

/// The 0–99 percentile of `user_id`, with an optional salt prepended (empty = none,
/// which is what the TypeScript does).
pub fn percentile(seed: &[u8], user_id: &str) -> u8 {
    let mut hasher = Md5::new();
    hasher.update(seed);
    hasher.update(user_id.as_bytes());
    let digest = hasher.finalize();
    // The first 8 hex digits are the first 4 bytes, read big-endian.
    let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    (head % 100) as u8
}

/// Whether a percentile falls in the v2 cohort at `rollout` percent.
/// 0 sends nobody and 100 everybody, so raising the rollout only adds users.
pub const fn in_v2_cohort(percentile: u8, rollout: u8) -> bool {
    percentile < rollout
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &str = include_str!("../../tests/data/percentile-vectors.tsv");

    fn md5_hex(s: &str) -> String {
        Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn agrees_with_node_on_every_vector() {
        let mut rows = 0;
        for line in VECTORS.lines().skip(1) {
            let mut cols = line.split('\t');
            let quoted = cols.next().unwrap();
            let hex = cols.next().unwrap();
            let expected: u8 = cols.next().unwrap().parse().unwrap();
            let id: String = serde_json::from_str(quoted).unwrap();
            assert_eq!(md5_hex(&id), hex, "md5 of {quoted}");
            assert_eq!(percentile(b"", &id), expected, "percentile of {quoted}");
            rows += 1;
        }
        assert_eq!(rows, 2000);
    }

    #[test]
    fn seed_is_prepended() {
        assert_eq!(percentile(b"salt-", "user-1"), percentile(b"", "salt-user-1"));
    }

    #[test]
    fn distribution_at_37_percent() {
        let mut rng = fastrand::Rng::with_seed(37);
        let v2 = (0..10_000)
            .map(|_| format!("{:032x}", rng.u128(..)))
            .filter(|id| in_v2_cohort(percentile(b"", id), 37))
            .count();
        assert!((3_500..=3_900).contains(&v2), "{v2} of 10000 went to v2");
    }

    #[test]
    fn raising_the_rollout_never_moves_a_v2_user_back() {
        for n in 0..5_000 {
            let p = percentile(b"", &format!("user-{n}"));
            for (low, high) in [(0, 10), (10, 50), (50, 100), (10, 11)] {
                if in_v2_cohort(p, low) {
                    assert!(in_v2_cohort(p, high), "user-{n} left v2 going {low}->{high}");
                }
            }
        }
    }

    #[test]
    fn bounds() {
        assert!((0..100).all(|p| !in_v2_cohort(p, 0)));
        assert!((0..100).all(|p| in_v2_cohort(p, 100)));
    }
}
