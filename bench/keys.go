package bench

import (
	"math"
	"math/rand/v2"
	"strconv"
)

// KeyChooser picks key indexes in [0, N). It holds no mutable state, so
// workers share one and each brings its own random source.
type KeyChooser interface {
	// Next returns the next key index, drawn with r.
	Next(r *rand.Rand) int
	// N is the size of the key space.
	N() int
}

// NewKeyChooser returns the chooser of distribution d over n keys
// (n >= 1). An unknown distribution is uniform; Options.Validate refuses
// one before it gets here.
func NewKeyChooser(d Distribution, n int) KeyChooser {
	if d == Zipfian {
		return newScrambledZipfian(n, zipfianTheta)
	}
	return uniform(n)
}

type uniform int

func (u uniform) Next(r *rand.Rand) int { return r.IntN(int(u)) }
func (u uniform) N() int                { return int(u) }

// zipfianTheta is YCSB's ZIPFIAN_CONSTANT.
const zipfianTheta = 0.99

// scrambledZipfian is YCSB's ScrambledZipfianGenerator: a zipfian draw
// (Gray et al., "Quickly Generating Billion-Record Synthetic Databases",
// SIGMOD 1994: the rank 0 is the most popular) whose rank is then hashed
// over the key space. Without the hash the hot keys would be 0, 1, 2...;
// with it they land in unrelated partitions, as hot keys do in real data.
// Like YCSB, hashing modulo n lets two ranks share a key; that merges a
// few cold ranks and changes the skew negligibly.
type scrambledZipfian struct {
	n                   int
	theta, alpha, zetan float64
	eta, half           float64 // half: 1 + 0.5^theta, the bound of rank 1
}

func newScrambledZipfian(n int, theta float64) *scrambledZipfian {
	z := &scrambledZipfian{n: n, theta: theta}
	if n < 2 {
		return z
	}
	z.zetan = zeta(n, theta)
	zeta2 := zeta(2, theta)
	z.alpha = 1 / (1 - theta)
	z.eta = (1 - math.Pow(2/float64(n), 1-theta)) / (1 - zeta2/z.zetan)
	z.half = 1 + math.Pow(0.5, theta)
	return z
}

// zeta is the generalized harmonic number sum_{i=1..n} 1/i^theta: O(n),
// computed once per run (about 10 ms for a million keys).
func zeta(n int, theta float64) float64 {
	var s float64
	for i := 1; i <= n; i++ {
		s += 1 / math.Pow(float64(i), theta)
	}
	return s
}

func (z *scrambledZipfian) N() int { return z.n }

func (z *scrambledZipfian) Next(r *rand.Rand) int {
	if z.n < 2 {
		return 0
	}
	return int(fnv64(uint64(z.rank(r))) % uint64(z.n))
}

// rank draws the unscrambled zipfian rank in [0, n).
func (z *scrambledZipfian) rank(r *rand.Rand) int {
	u := r.Float64()
	uz := u * z.zetan
	switch {
	case uz < 1:
		return 0
	case uz < z.half:
		return 1
	}
	k := int(float64(z.n) * math.Pow(z.eta*u-z.eta+1, z.alpha))
	return min(k, z.n-1)
}

// fnv64 is FNV-1a over the 8 little-endian bytes of v, as YCSB's
// Utils.fnvhash64 scrambles.
func fnv64(v uint64) uint64 {
	const (
		offset = 0xcbf29ce484222325
		prime  = 0x100000001b3
	)
	h := uint64(offset)
	for range 8 {
		h ^= v & 0xff
		h *= prime
		v >>= 8
	}
	return h
}

// appendKey appends the key of index i to dst: the prefix, then i in
// decimal. Keys of neighbouring indexes hash to unrelated partitions
// (MD5), so a range of indexes is spread over the cluster.
func appendKey(dst []byte, prefix string, i int) []byte {
	dst = append(dst, prefix...)
	return strconv.AppendInt(dst, int64(i), 10)
}
