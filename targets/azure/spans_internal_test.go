package azure

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSpans checks mergeSpans and subtractSpans against a bitmap.
func TestSpans(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const n = 64
	random := func() ([]span, [n]bool) {
		var s []span
		var bits [n]bool
		for range rng.IntN(6) {
			lo := rng.Int64N(n)
			hi := lo + rng.Int64N(n-lo+1)
			s = append(s, span{lo, hi})
			for i := lo; i < hi; i++ {
				bits[i] = true
			}
		}
		return s, bits
	}
	check := func(what string, got []span, want [n]bool) {
		t.Helper()
		var bits [n]bool
		for k, x := range got {
			if x.lo >= x.hi || k > 0 && got[k-1].hi >= x.lo {
				t.Fatalf("%s: %v is not sorted, disjoint, non-empty and merged", what, got)
			}
			for i := x.lo; i < x.hi; i++ {
				bits[i] = true
			}
		}
		if bits != want {
			t.Fatalf("%s = %v, want bitmap %v", what, got, want)
		}
	}
	for range 2000 {
		a, abits := random()
		b, bbits := random()
		a, b = mergeSpans(a), mergeSpans(slices.Clone(b))
		check("merge", a, abits)
		var want [n]bool
		for i := range want {
			want[i] = abits[i] && !bbits[i]
		}
		got := subtractSpans(a, b)
		// subtractSpans may leave touching pieces; merged they are the set.
		check("subtract", mergeSpans(slices.Clone(got)), want)
	}
}
