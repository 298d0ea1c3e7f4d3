//! Seeded randomness for SadTalker's motion: a Mersenne Twister that reproduces Python's
//! `random` module (so `random.seed(s)` + `generate_blink_seq_randomly` is matched exactly),
//! the random blink sequence, and Box-Muller normal draws for the CVAE noise `z`.
//! Every draw comes from an explicit per-request seed; no global generator is touched, so
//! concurrent requests never interfere.

/// MT19937 with CPython's seeding (`init_by_array` over the 32-bit words of the seed).
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mt19937(index {})", self.index)
    }
}

const N: usize = 624;
const M: usize = 397;

impl Mt19937 {
    fn init_genrand(seed: u32) -> Self {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            state[i] = 1_812_433_253u32.wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Self { state, index: N }
    }

    /// CPython `init_by_array`.
    pub fn from_key(key: &[u32]) -> Self {
        let mut g = Self::init_genrand(19_650_218);
        let mt = &mut g.state;
        let key: &[u32] = if key.is_empty() { &[0] } else { key };
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        g
    }

    /// The generator `random.seed(seed)` creates in Python (for a non-negative int seed).
    pub fn python_seeded(seed: u64) -> Self {
        let (lo, hi) = (seed as u32, (seed >> 32) as u32);
        if hi == 0 {
            Self::from_key(&[lo])
        } else {
            Self::from_key(&[lo, hi])
        }
    }

    fn generate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for k in 0..N {
            let y = (self.state[k] & UPPER) | (self.state[(k + 1) % N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.state[k] = self.state[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.generate();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// Python `random.random()`: 53-bit float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// Python `_randbelow(n)` for `1 <= n < 2^32` (rejection sampling on `getrandbits`).
    pub fn below(&mut self, n: u32) -> u32 {
        let k = 32 - n.leading_zeros();
        loop {
            let r = if k == 0 { 0 } else { self.next_u32() >> (32 - k) };
            if r < n {
                return r;
            }
        }
    }

    /// A standard normal draw (Box-Muller on two uniform draws), rounded to f32.
    pub fn normal_f32(&mut self) -> f32 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// Shape of one blink in the eye-closure ratio (`generate_blink_seq_randomly`).
const BLINK: [f32; 5] = [0.5, 0.9, 1.0, 0.9, 0.5];

/// `generate_blink_seq_randomly(num_frames)` driven by `rng` (seeded like Python's `random`):
/// no blinks for 20 frames or fewer, otherwise blinks separated by random gaps drawn from
/// `range(min(10, T), min(T // 2, 70))`. For T = 21 that range is empty (the reference raises);
/// here the sequence then simply has no blink.
pub fn random_blink_ratio(num_frames: usize, rng: &mut Mt19937) -> Vec<f32> {
    let mut ratio = vec![0.0f32; num_frames];
    if num_frames <= 20 {
        return ratio;
    }
    let lo = num_frames.min(10);
    let hi = (num_frames / 2).min(70);
    if hi <= lo {
        return ratio;
    }
    let mut frame = 0usize;
    while frame < num_frames {
        let start = lo + rng.below((hi - lo) as u32) as usize;
        if frame + start + 5 < num_frames {
            ratio[frame + start..frame + start + 5].copy_from_slice(&BLINK);
            frame += start + 5;
        } else {
            break;
        }
    }
    ratio
}

/// The two independent streams one request uses: blinks (Python-compatible seeding of `seed`)
/// and the CVAE noise (a different key derived from the same seed).
pub fn blink_rng(seed: u64) -> Mt19937 {
    Mt19937::python_seeded(seed)
}

/// Generator for the CVAE noise draws of a request.
pub fn noise_rng(seed: u64) -> Mt19937 {
    Mt19937::from_key(&[seed as u32, (seed >> 32) as u32, 0x5ad7_a1c3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sadtalker_mt_matches_reference_outputs() {
        // Reference MT19937 (init_genrand(5489)) first output: 3499211612.
        let mut g = Mt19937::init_genrand(5489);
        assert_eq!(g.next_u32(), 3_499_211_612);
        // Python: random.seed(0); random.random() == 0.8444218515250481
        let mut p = Mt19937::python_seeded(0);
        assert_eq!(p.next_f64(), 0.844_421_851_525_048_1);
        // Python: random.seed(1111); random.random() == 0.21760077176688164
        assert_eq!(Mt19937::python_seeded(1111).next_f64(), 0.217_600_771_766_881_64);
        // Python: random.seed(2**40 + 5); random.getrandbits(32) == 2166296868
        assert_eq!(Mt19937::python_seeded((1 << 40) + 5).next_u32(), 2_166_296_868);
    }

    #[test]
    fn sadtalker_blinks_match_python_random() {
        // Python: random.seed(99); generate_blink_seq_randomly(500) has its peaks (1.0) at:
        let peaks = [37usize, 76, 103, 156, 182, 211, 241, 264, 327, 347, 378, 439, 478];
        let r = random_blink_ratio(500, &mut blink_rng(99));
        let got: Vec<usize> = r.iter().enumerate().filter(|(_, &v)| v == 1.0).map(|(i, _)| i).collect();
        assert_eq!(got, peaks);
    }

    #[test]
    fn sadtalker_blinks_stay_inside_the_sequence() {
        for t in [0usize, 5, 20, 21, 22, 55, 200, 1500] {
            let r = random_blink_ratio(t, &mut blink_rng(7));
            assert_eq!(r.len(), t);
            if t <= 21 {
                assert!(r.iter().all(|&v| v == 0.0));
            }
        }
        let a = random_blink_ratio(300, &mut blink_rng(3));
        let b = random_blink_ratio(300, &mut blink_rng(3));
        assert_eq!(a, b);
        assert!(a.contains(&1.0));
    }

    #[test]
    fn sadtalker_normal_draws_look_standard() {
        let mut g = noise_rng(42);
        let xs: Vec<f64> = (0..20_000).map(|_| f64::from(g.normal_f32())).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }
}
