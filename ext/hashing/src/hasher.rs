use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use crate::Error;

/// The hash functions Dragonfly peers use: CRC-32/IEEE for pieces, SHA-2 for whole files, plus our own extras.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Crc32,
    Crc32c,
    Sha256,
    Sha512,
    Blake3,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Crc32,
        Algorithm::Crc32c,
        Algorithm::Sha256,
        Algorithm::Sha512,
        Algorithm::Blake3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "crc32",
            Algorithm::Crc32c => "crc32c",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Blake3 => "blake3",
        }
    }

    /// Length of the digest in bytes.
    pub fn digest_size(self) -> usize {
        match self {
            Algorithm::Crc32 | Algorithm::Crc32c => 4,
            Algorithm::Sha256 | Algorithm::Blake3 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        Algorithm::ALL
            .into_iter()
            .find(|algorithm| algorithm.name() == name)
            .ok_or_else(|| Error::UnknownAlgorithm(name.to_owned()))
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// CRC-32/IEEE of `data` continuing from `value`, bit-identical to `zlib.crc32(data, value)`.
pub fn crc32(data: &[u8], value: u32) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(value);
    hasher.update(data);
    hasher.finalize()
}

/// CRC-32C (Castagnoli) of `data` continuing from `value`.
pub fn crc32c(data: &[u8], value: u32) -> u32 {
    crc32c::crc32c_append(value, data)
}

/// A streaming hash whose digest can be taken any number of times without ending the stream.
#[derive(Clone)]
pub enum Hasher {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    // Boxed: the BLAKE3 state is ~2 KiB and would bloat every other variant.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Crc32 => Hasher::Crc32(crc32fast::Hasher::new()),
            Algorithm::Crc32c => Hasher::Crc32c(0),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            Algorithm::Blake3 => Hasher::Blake3(Box::default()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Crc32(_) => Algorithm::Crc32,
            Hasher::Crc32c(_) => Algorithm::Crc32c,
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
            Hasher::Blake3(_) => Algorithm::Blake3,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc32(state) => state.update(data),
            Hasher::Crc32c(state) => *state = crc32c::crc32c_append(*state, data),
            Hasher::Sha256(state) => state.update(data),
            Hasher::Sha512(state) => state.update(data),
            Hasher::Blake3(state) => {
                state.update(data);
            }
        }
    }

    /// The digest of everything hashed so far; CRCs are 4 bytes big-endian, like their usual hex form.
    pub fn digest(&self) -> Vec<u8> {
        match self {
            Hasher::Crc32(state) => state.clone().finalize().to_be_bytes().to_vec(),
            Hasher::Crc32c(state) => state.to_be_bytes().to_vec(),
            Hasher::Sha256(state) => state.clone().finalize().to_vec(),
            Hasher::Sha512(state) => state.clone().finalize().to_vec(),
            Hasher::Blake3(state) => state.finalize().as_bytes().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK: &[u8] = b"123456789";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn one_shot(algorithm: Algorithm, data: &[u8]) -> String {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hex(&hasher.digest())
    }

    #[test]
    fn crc_check_values() {
        assert_eq!(crc32(CHECK, 0), 0xCBF4_3926);
        assert_eq!(crc32c(CHECK, 0), 0xE306_9283);
        assert_eq!(one_shot(Algorithm::Crc32, CHECK), "cbf43926");
        assert_eq!(one_shot(Algorithm::Crc32c, CHECK), "e3069283");
    }

    #[test]
    fn crc_continues_from_value() {
        let (head, tail) = CHECK.split_at(4);
        assert_eq!(crc32(tail, crc32(head, 0)), 0xCBF4_3926);
        assert_eq!(crc32c(tail, crc32c(head, 0)), 0xE306_9283);
    }

    #[test]
    fn sha_known_vectors() {
        assert_eq!(
            one_shot(Algorithm::Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            one_shot(Algorithm::Sha512, b"abc"),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn blake3_known_vectors() {
        assert_eq!(
            one_shot(Algorithm::Blake3, b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            one_shot(Algorithm::Blake3, b"abc"),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn digest_does_not_end_the_stream() {
        for algorithm in Algorithm::ALL {
            let mut hasher = Hasher::new(algorithm);
            hasher.update(b"1234");
            let partial = hasher.digest();
            assert_eq!(partial, hasher.digest());
            hasher.update(b"56789");
            assert_eq!(
                hex(&hasher.digest()),
                one_shot(algorithm, CHECK),
                "{algorithm}"
            );
            assert_eq!(hasher.digest().len(), algorithm.digest_size());
        }
    }

    #[test]
    fn names_round_trip() {
        for algorithm in Algorithm::ALL {
            assert_eq!(algorithm.name().parse::<Algorithm>().unwrap(), algorithm);
            assert_eq!(Hasher::new(algorithm).algorithm(), algorithm);
        }
        let err = "md5".parse::<Algorithm>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown hash algorithm 'md5', expected one of: crc32, crc32c, sha256, sha512, blake3"
        );
    }
}
