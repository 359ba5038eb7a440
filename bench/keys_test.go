package bench

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestKeyDistribution checks the shape of each distribution on 1000 keys:
// zipfian (theta 0.99) gives its most popular key about 1/zeta(1000) ≈ 13%
// of the draws and its top 10% of keys about two thirds; uniform gives
// every key about 0.1% and its top 10% about 10%.
func TestKeyDistribution(t *testing.T) {
	const n, draws = 1000, 200_000
	for _, tc := range []struct {
		dist               Distribution
		topMin, topMax     float64 // share of the most popular key
		top10Min, top10Max float64 // share of the 10% most popular keys
	}{
		{Zipfian, 0.10, 0.17, 0.55, 0.80},
		{Uniform, 0.0005, 0.002, 0.09, 0.12},
	} {
		t.Run(string(tc.dist), func(t *testing.T) {
			kc := NewKeyChooser(tc.dist, n)
			if kc.N() != n {
				t.Fatalf("N() = %d", kc.N())
			}
			r := rand.New(rand.NewPCG(1, 2))
			counts := make([]int, n)
			for range draws {
				k := kc.Next(r)
				if k < 0 || k >= n {
					t.Fatalf("key %d out of [0, %d)", k, n)
				}
				counts[k]++
			}
			slices.Sort(counts)
			slices.Reverse(counts)
			top := float64(counts[0]) / draws
			var s int
			for _, c := range counts[:n/10] {
				s += c
			}
			top10 := float64(s) / draws
			t.Logf("top key %.4f, top 10%% %.3f", top, top10)
			if top < tc.topMin || top > tc.topMax {
				t.Errorf("most popular key has %.4f of draws, want [%v, %v]", top, tc.topMin, tc.topMax)
			}
			if top10 < tc.top10Min || top10 > tc.top10Max {
				t.Errorf("top 10%% of keys have %.3f of draws, want [%v, %v]", top10, tc.top10Min, tc.top10Max)
			}
		})
	}
}

// TestZipfianScrambled checks that the hot keys are not the lowest
// indexes: the scrambling spreads them over the key space.
func TestZipfianScrambled(t *testing.T) {
	kc := NewKeyChooser(Zipfian, 100_000)
	r := rand.New(rand.NewPCG(3, 4))
	counts := map[int]int{}
	for range 100_000 {
		counts[kc.Next(r)]++
	}
	hottest, best := 0, 0
	for k, c := range counts {
		if c > best {
			hottest, best = k, c
		}
	}
	if hottest < 100 {
		t.Errorf("hottest key is index %d: the ranks are not scrambled", hottest)
	}
}

func TestZipfianTinyKeySpace(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{1, 2, 3} {
		kc := NewKeyChooser(Zipfian, n)
		for range 1000 {
			if k := kc.Next(r); k < 0 || k >= n {
				t.Fatalf("n=%d: key %d out of range", n, k)
			}
		}
	}
}
