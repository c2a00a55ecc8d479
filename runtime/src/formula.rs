//! Deterministic fixture weights ("tlc-fixture-v1", see `shared/parity/FORMULA.md`).
//!
//! Every fixture parameter is a pure function of its `state_dict` name and shape, so tests
//! recompute weights instead of shipping checkpoints. Values are bit-identical to the
//! Python/numpy reference: all mixing is wrapping `u64`, the value is computed in `f64`
//! and rounded once to `f32`.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a 64-bit hash of `bytes` (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(FNV_OFFSET, |h, &b| (h ^ b as u64).wrapping_mul(FNV_PRIME))
}

/// The SplitMix64-style mixer of the formula: `z` for element `k` of a tensor whose name hashes to `h`.
fn mix(h: u64, k: u64) -> u64 {
    let mut z = h.wrapping_add((k + 1).wrapping_mul(GOLDEN));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform `u` in [0, 1) from a mixed `z`: `(z >> 11) * 2^-53`.
fn unit(z: u64) -> f64 {
    (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Which value rule of the formula applies.
#[derive(Clone, Copy)]
enum Rule {
    RunningVar,
    RunningMean,
    Weight { scale: f64 },
    Gamma,
    Bias,
    Other,
    Input,
}

fn values_with(name: &str, n: usize, rule: Rule) -> Vec<f32> {
    let h = fnv1a64(name.as_bytes());
    (0..n as u64)
        .map(|k| {
            let v = 2.0 * unit(mix(h, k)) - 1.0;
            let x = match rule {
                Rule::RunningVar => 1.0 + 0.25 * (v + 1.0),
                Rule::RunningMean => 0.1 * v,
                Rule::Weight { scale } => v * scale,
                Rule::Gamma => 1.0 + 0.1 * v,
                Rule::Bias => 0.1 * v,
                Rule::Other => 0.02 * v,
                Rule::Input => v,
            };
            x as f32
        })
        .collect()
}

/// Formula values of the parameter `name` with PyTorch shape `shape`, row-major (C order).
///
/// Rules by name suffix, first match wins: `running_var`, `running_mean`, `weight` with at
/// least 2 dims (`v * sqrt(6 / fan_in)`, fan_in = product of `shape[1..]`), 1-dim `weight`,
/// `bias`, anything else. A 0-dim shape (`&[]`) yields one value.
pub fn fixture_values(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let rule = if name.ends_with("running_var") {
        Rule::RunningVar
    } else if name.ends_with("running_mean") {
        Rule::RunningMean
    } else if shape.len() >= 2 && name.ends_with("weight") {
        let fan_in: usize = shape[1..].iter().product();
        Rule::Weight {
            scale: (6.0 / fan_in as f64).sqrt(),
        }
    } else if name.ends_with("weight") {
        Rule::Gamma
    } else if name.ends_with("bias") {
        Rule::Bias
    } else {
        Rule::Other
    };
    values_with(name, n, rule)
}

/// The fixture input tensor of shape `shape` (name `input`, value = v, uniform in [-1, 1)).
pub fn fixture_input(shape: &[usize]) -> Vec<f32> {
    values_with("input", shape.iter().product(), Rule::Input)
}

#[cfg(test)]
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;

    fn parse(list: &str) -> Vec<f32> {
        list.split(',')
            .map(|s| s.trim().parse::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn hash_mix_and_unit_vectors() {
        let cases: [(&str, u64, u64, f64); 4] = [
            (
                "conv1.weight",
                0x69a29a2cee47d254,
                0x8b8a08a85128a1b0,
                0.54507497891714474,
            ),
            (
                "bn1.running_var",
                0xe3fa2b7461643d5f,
                0xa46e4572d9b05523,
                0.64230760625804462,
            ),
            (
                "fc.bias",
                0x145e200af8fe4b85,
                0x7a475b25a1f155d4,
                0.47765130680813184,
            ),
            (
                "input",
                0x1ebbae8f5810b65b,
                0x190a9f76a9bd8bf6,
                0.097818342657538193,
            ),
        ];
        for (name, h, z, u) in cases {
            assert_eq!(fnv1a64(name.as_bytes()), h, "{name}");
            assert_eq!(mix(h, 0), z, "{name}");
            assert_eq!(unit(z), u, "{name}");
        }
    }

    #[test]
    fn value_vectors_bit_exact() {
        let w = fixture_values("conv1.weight", &[4, 3, 3, 3]);
        assert_eq!(w.len(), 108);
        let want = parse(
            "0.0424970984, 0.231140718, -0.449793696, 0.22268945, -0.123177826, 0.437720805,
             0.377422661, -0.393766701, 0.186521575, 0.397420973, -0.354700625, 0.338576674",
        );
        assert_eq!(&w[..12], &want[..]);
        assert_eq!(
            fixture_values("bn1.running_var", &[4]),
            parse("1.32115376, 1.39337671, 1.48538947, 1.22192562")
        );
        assert_eq!(
            fixture_values("fc.bias", &[3]),
            parse("-0.00446973881, -0.00385363633, -0.0439873822")
        );
        let want = parse(
            "-0.80436331, 0.304720849, -0.592751443, -0.451110661, 0.582195103, 0.516632497,
             -0.69317472, 0.998906434, -0.298582166, 0.84061712, -0.772485495, -0.0198418964",
        );
        assert_eq!(fixture_input(&[1, 3, 2, 2]), want);
    }

    #[test]
    fn rule_selection() {
        // 1-dim weight -> 1 + 0.1 v, in [0.9, 1.1); other names -> 0.02 v.
        assert!(fixture_values("bn1.weight", &[8])
            .iter()
            .all(|&x| (0.9..1.1).contains(&x)));
        assert!(fixture_values("class_token", &[1, 1, 8])
            .iter()
            .all(|&x| x.abs() <= 0.02));
        assert!(fixture_values("bn1.running_mean", &[8])
            .iter()
            .all(|&x| x.abs() <= 0.1));
        assert_eq!(fixture_values("x", &[]).len(), 1);
    }

    #[test]
    fn input_matches_resnet50_npy() {
        let Some(path) = crate::shared_asset("parity/resnet50/input.npy") else { return };
        let t = candle_core::Tensor::read_npy(path).unwrap();
        assert_eq!(t.dims(), &[1, 3, 224, 224]);
        let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let want = fixture_input(&[1, 3, 224, 224]);
        assert!(got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
