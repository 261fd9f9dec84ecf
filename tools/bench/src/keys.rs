//! Key names and the choice of a key for each op.

use crate::config::Distribution;
use rand::Rng;
use std::fmt::Write;

/// Up to this many keys, names are formatted once up front; above, per op.
const LISTED_MAX: u64 = 1_000_000;

/// The names of keys `0..count`: `<prefix><index>`.
pub enum Keys {
    Listed(Vec<String>),
    Formatted(String),
}

impl Keys {
    pub fn new(prefix: &str, count: u64) -> Keys {
        if count <= LISTED_MAX {
            Keys::Listed((0..count).map(|i| format!("{prefix}{i}")).collect())
        } else {
            Keys::Formatted(prefix.to_string())
        }
    }

    /// The name of key `index` (a fresh `String`: a message owns its key).
    pub fn name(&self, index: u64) -> String {
        match self {
            Keys::Listed(names) => names[index as usize].clone(),
            Keys::Formatted(prefix) => {
                let mut key = String::with_capacity(prefix.len() + 20);
                key.push_str(prefix);
                let _ = write!(key, "{index}");
                key
            }
        }
    }

    /// The longest name's length in bytes.
    pub fn longest(prefix: &str, count: u64) -> usize {
        prefix.len() + count.saturating_sub(1).max(1).ilog10() as usize + 1
    }
}

/// Draws key indices in `0..count`.
pub enum KeyPicker {
    Uniform(u64),
    /// Rank r (1-based) with weight 1/r^theta; index = rank - 1. Rejection-inversion sampling:
    /// constant setup, no table of `count` entries.
    Zipf(rand_distr::Zipf<f64>, u64),
    Hot,
    Sequential(u64),
}

/// The next key of the sequential distribution, shared by every client of the process.
static NEXT_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl KeyPicker {
    pub fn new(distribution: Distribution, count: u64) -> KeyPicker {
        match distribution {
            Distribution::Uniform => KeyPicker::Uniform(count),
            Distribution::Zipf(theta) => KeyPicker::Zipf(
                rand_distr::Zipf::new(count, theta).expect("theta > 0 and count >= 1 are checked"),
                count,
            ),
            Distribution::Hot => KeyPicker::Hot,
            Distribution::Sequential => KeyPicker::Sequential(count),
        }
    }

    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            KeyPicker::Uniform(count) => rng.gen_range(0..*count),
            KeyPicker::Zipf(zipf, count) => {
                let rank = rng.sample(zipf) as u64;
                rank.clamp(1, *count) - 1
            }
            KeyPicker::Hot => 0,
            KeyPicker::Sequential(count) => {
                NEXT_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % count
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn names_are_prefix_and_index_both_ways() {
        let listed = Keys::new("bench-ab-", 10);
        let formatted = Keys::Formatted("bench-ab-".into());
        assert_eq!(listed.name(7), "bench-ab-7");
        assert_eq!(formatted.name(7), "bench-ab-7");
        assert_eq!(formatted.name(1_234_567), "bench-ab-1234567");
        assert_eq!(Keys::longest("p", 10), 2);
        assert_eq!(Keys::longest("p", 11), 3);
        assert_eq!(Keys::longest("p", 1), 2);
    }

    #[test]
    fn distributions_draw_in_range_with_their_shape() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 1000;
        let draw = |picker: &KeyPicker, rng: &mut StdRng| {
            let mut hits = vec![0u32; n as usize];
            for _ in 0..100_000 {
                hits[picker.pick(rng) as usize] += 1;
            }
            hits
        };
        let uniform = draw(&KeyPicker::new(Distribution::Uniform, n), &mut rng);
        assert!(
            uniform.iter().all(|&h| (40..=170).contains(&h)),
            "{uniform:?}"
        );
        let zipf = draw(&KeyPicker::new(Distribution::Zipf(1.0), n), &mut rng);
        // Rank 1 is drawn about 1/H(1000) ~ 13% of the time, rank 2 half as often.
        assert!((11_000..16_000).contains(&zipf[0]), "{}", zipf[0]);
        assert!(
            (zipf[0] / 2).abs_diff(zipf[1]) < 1_000,
            "{} {}",
            zipf[0],
            zipf[1]
        );
        assert!(zipf[999] < 100);
        let hot = draw(&KeyPicker::new(Distribution::Hot, n), &mut rng);
        assert_eq!(hot[0], 100_000);
    }

    #[test]
    fn a_million_key_zipf_needs_no_table() {
        let start = std::time::Instant::now();
        let picker = KeyPicker::new(Distribution::Zipf(0.99), 1_000_000);
        let mut rng = StdRng::seed_from_u64(1);
        let max = (0..10_000).map(|_| picker.pick(&mut rng)).max().unwrap();
        assert!(max < 1_000_000);
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }
}
